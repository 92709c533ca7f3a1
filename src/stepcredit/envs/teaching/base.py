"""What every rule teacher shares: ``Lesson``, the episode text a teacher reads (``EpisodeText``), the
``Teacher`` base class and its registry (``register_teacher``, ``teachers``, ``teacher_of``), and the text
helpers its checks use (``abstract``, ``abstract_action``, ``error_line``, ``json_or_none``,
``printable``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from stepcredit.envs.actions import parse_action

__all__ = [
    "GENERAL_ANSWER",
    "EpisodeText",
    "Lesson",
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


@dataclass(frozen=True)
class Lesson:
    """One "mistake to avoid" (SkillRL's ``{trigger_condition, bad_action}`` plus the corrective
    principle); ``title`` is the rule's short name (the title of the general skill the lesson becomes
    when it holds across families)."""

    title: str
    trigger: str
    mistake: str
    principle: str


class EpisodeText(Protocol):
    """What a teacher reads of an episode: the prompt, each step's action and the observation it caused,
    and ``skipped``, how many earlier steps were cut off (a check that needs the whole history skips
    what it cannot see)."""

    @property
    def prompt(self) -> str: ...
    @property
    def actions(self) -> Sequence[str]: ...
    @property
    def observations(self) -> Sequence[str]: ...
    @property
    def skipped(self) -> int: ...


class Teacher:
    """The rules one environment family gives SkillRL's rule-based summariser (its stand-in for the
    teacher LLM), about *its own* prompts, tools and error texts:

    * ``kind(prompt)`` — the task kind of a prompt of this family (``""`` for the family without a finer
      kind), or None when the prompt is not of this family; the task type is ``family:kind``;
    * ``describe(kind)`` — a few words on what tasks of that kind ask (a plan template's ``when_to_apply``);
    * ``error_rules`` — ``(pattern in the error text, principle)`` for this family's tool errors, tried in
      order after the generic rules; ``{tool}`` in a principle is the tool's name;
    * ``check(episode, kind)`` — the first family rule a failed episode breaks, as a lesson, or None;
    * ``ending(episode, kind)`` — a lesson on a wrong final answer that this family can name, or None;
    * ``answer_principle(kind)`` — the check-before-answering principle of the family.

    The base class knows no family: it types nothing and checks nothing. Subclass it, set ``family``,
    and ``register_teacher`` an instance.
    """

    family: ClassVar[str] = ""
    error_rules: ClassVar[tuple[tuple[str, str], ...]] = ()

    def kind(self, prompt: str) -> str | None:
        return None

    def describe(self, kind: str) -> str:
        return "any task"

    def check(self, episode: EpisodeText, kind: str) -> Lesson | None:
        return None

    def ending(self, episode: EpisodeText, kind: str) -> Lesson | None:
        return None

    def answer_principle(self, kind: str) -> str:
        return GENERAL_ANSWER


GENERAL_ANSWER = "Check the answer against the task and the tool results before giving it."

_TEACHERS: dict[str, Teacher] = {}


def register_teacher(teacher: Teacher) -> Teacher:
    """Add ``teacher`` for its family (typing tries teachers in registration order; registering a family
    again replaces its teacher in place)."""
    if not isinstance(teacher, Teacher):
        raise TypeError(f"register_teacher needs a Teacher, got {type(teacher).__name__}")
    family = teacher.family
    if not isinstance(family, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", family) or family == "general":
        raise ValueError(f"a teacher's family must be a lower-case word other than 'general', got {family!r}")
    _TEACHERS[family] = teacher
    return teacher


def teachers() -> tuple[Teacher, ...]:
    """The registered teachers, in registration order."""
    return tuple(_TEACHERS.values())


def teacher_of(task_type: str) -> Teacher | None:
    """The teacher of a task type's family (``booking:book+cancel`` → the booking teacher), if any."""
    return _TEACHERS.get(task_type.partition(":")[0])


# ---------------------------------------------------------------------------------------------- text helpers
def error_line(observation: str) -> str | None:
    """The first ``Error: ...`` line of an observation (a tool that refused the call), if any."""
    return next((line.strip() for line in observation.splitlines() if line.strip().startswith("Error:")), None)


def json_or_none(text: str) -> Any:
    """``text`` parsed as JSON, or None when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text: str) -> str:
    """One line of printable ASCII (the environments' observation charset): white space collapsed, any
    other character shown as '?'."""
    return _UNPRINTABLE.sub("?", " ".join(text.split()))


# ---------------------------------------------------------------------------------------------- abstraction
_PLACEHOLDER = r"\[(?:N|ID|NAME|DATE|TIME|CODE)\]"
_TOKEN = re.compile(
    rf"""
    (?P<ph>{_PLACEHOLDER})
  | (?P<dq>"(?:[^"\\\n]|\\.)*")
  | (?P<sq>(?<![A-Za-z0-9\]])'[^'\n]*'(?![A-Za-z0-9\[]))
  | (?P<date>\b\d{{4}}-\d{{2}}-\d{{2}}\b)
  | (?P<time>\b\d{{1,2}}:\d{{2}}\b)
  | (?P<id>\b(?=[A-Za-z0-9_]*[A-Za-z])(?=[A-Za-z0-9_]*[0-9])[A-Za-z0-9_]+\b|\b[A-Z]{{5,}}\b)
  | (?P<code>\b[A-Z]{{3}}\b)
  | (?P<num>-?\b[0-9]+(?:\.[0-9]+)?\b)
    """,
    re.VERBOSE,
)
_KEYWORD = re.compile(r"[a-z_\-]*")
_ONE_PLACEHOLDER = re.compile(_PLACEHOLDER)


def _quoted(text: str) -> str:
    quote, inner = text[0], text[1:-1]
    if _KEYWORD.fullmatch(inner):
        return text  # a key or a category word ("economy"): not an entity
    inner = abstract(inner)
    # the quotes stay: a stray quote elsewhere must not pair up with them when abstracting again
    return f"{quote}{inner if _ONE_PLACEHOLDER.fullmatch(inner) else '[NAME]'}{quote}"


def _token(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "ph":
        return m.group()
    if kind in ("dq", "sq"):
        return _quoted(m.group())
    return {"date": "[DATE]", "time": "[TIME]", "id": "[ID]", "code": "[CODE]", "num": "[N]"}[str(kind)]


def abstract(text: str) -> str:
    """``text`` with its entities abstracted (SkillRL's ``[Entity]`` placeholders, finer): numbers →
    ``[N]``; ids (a word with letters and digits, ``u12``, ``o7``, ``cc_8862``, ``HA998``, or five or more
    capitals, ``BNHQVA``) → ``[ID]``; three-capital codes (airports) → ``[CODE]``; dates → ``[DATE]``;
    times → ``[TIME]``; a quoted string → ``"[NAME]"`` (quotes kept), unless it is a lower-case key or
    category word (kept) or one entity (its placeholder: ``'u12'`` → ``'[ID]'``). Quote marks that open
    or close a quote sit next to no letter or digit (``Lee's`` is no quote). Idempotent."""
    return _TOKEN.sub(_token, text)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return "[N]"
    if not isinstance(v, str):
        return "[NAME]"
    if _KEYWORD.fullmatch(v) and v:
        return v
    a = abstract(v)
    return a if _ONE_PLACEHOLDER.fullmatch(a) else "[NAME]"


def abstract_action(action: str) -> str:
    """An action as a template: each call as ``name(arg=<abstracted value>, ...)`` (calls joined by
    ``; ``; chat-format actions come out compact), an answer as ``answer <value>`` with the value kept
    when it is one lower-case word (``answer done``) and abstracted otherwise (``answer [N]``,
    ``answer [NAME]``); anything unparsable through ``abstract``."""
    parsed = parse_action(action)
    if parsed.answer is not None:
        return f"answer {_value(parsed.answer.strip())}"
    if parsed.calls:
        return "; ".join(
            f"{c.name}({', '.join(f'{k}={_value(v)}' for k, v in c.arguments.items())})" for c in parsed.calls
        )
    return abstract(" ".join(action.split()))
