"""Rule teachers: what each environment family tells SkillRL's rule-based summariser
(``stepcredit.feedback.skills.RuleSummariser``) about its own prompts, tools and error texts — the task
kind of a prompt, its description, the family's error rules, the checks of a failed episode and the
check-before-answering principle. The summariser itself knows no family: it asks the teacher of an
episode's family (``teacher_of``), and types a prompt by the first registered teacher that claims it.

The built-in families register theirs on import (``CalculatorTeacher``, ``LookupTeacher``,
``BookingTeacher``); a new family subclasses ``Teacher`` and calls ``register_teacher``.
"""

from stepcredit.envs.teaching.base import (
    GENERAL_ANSWER,
    EpisodeText,
    Lesson,
    Teacher,
    abstract,
    abstract_action,
    error_line,
    json_or_none,
    printable,
    register_teacher,
    teacher_of,
    teachers,
)
from stepcredit.envs.teaching.booking import BookingTeacher
from stepcredit.envs.teaching.calculator import CalculatorTeacher
from stepcredit.envs.teaching.lookup import LookupTeacher

for _teacher in (CalculatorTeacher(), LookupTeacher(), BookingTeacher()):
    register_teacher(_teacher)

__all__ = [
    "GENERAL_ANSWER",
    "BookingTeacher",
    "CalculatorTeacher",
    "EpisodeText",
    "Lesson",
    "LookupTeacher",
    "Teacher",
    "abstract",
    "abstract_action",
    "error_line",
    "json_or_none",
    "printable",
    "register_teacher",
    "teacher_of",
    "teachers",
]
