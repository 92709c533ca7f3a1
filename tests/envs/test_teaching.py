"""The families' rule teachers (``stepcredit.envs.teaching``): the summariser asks the teacher of an
episode's family and names none itself; a new family brings its own."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepcredit.envs.teaching.base as teaching_base
from stepcredit.envs import FAMILIES, env_factory
from stepcredit.envs.teaching import (
    EpisodeText,
    Lesson,
    Teacher,
    register_teacher,
    teacher_of,
    teachers,
)
from stepcredit.feedback.skills import Episode, RuleSummariser, distill, task_type

HARD = "Quiz: a hard one, pages p1 and p9, 1 guess"
EASY = "Quiz: an easy one, page p1"


class QuizTeacher(Teacher):
    family = "quiz"
    error_rules = (("page .* not found", "Open only the pages {tool} listed."),)

    def kind(self, prompt: str) -> str | None:
        if not prompt.startswith("Quiz:"):
            return None
        return "hard" if "hard" in prompt else ""

    def describe(self, kind: str) -> str:
        return f"{kind or 'plain'} quizzes"

    def check(self, episode: EpisodeText, kind: str) -> Lesson | None:
        for action in episode.actions:
            if action.startswith("guess"):
                return Lesson("Do not guess", "an answer is unknown", action, "Read a page before guessing.")
        return None

    def answer_principle(self, kind: str) -> str:
        return "Quote the page the answer is on."


@pytest.fixture
def quiz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Teacher]:
    monkeypatch.setattr(teaching_base, "_TEACHERS", dict(teaching_base._TEACHERS))
    yield register_teacher(QuizTeacher())


def test_the_built_in_families_each_claim_their_own_prompts() -> None:
    taught = [t.family for t in teachers()]
    assert taught == [f for f in FAMILIES if f in taught] == ["calculator", "lookup", "booking"]
    for family in FAMILIES:
        prompt, _ = env_factory(family, depth=3)().reset(seed=0)
        claims = [t.family for t in teachers() if t.kind(prompt) is not None]
        assert claims == ([family] if family in taught else [])  # a family without a teacher: no claim
        assert task_type(prompt).partition(":")[0] == (family if family in taught else "general")
    assert teacher_of("calculator:add") is teachers()[0] and teacher_of("general") is None


def test_a_new_family_brings_its_typing_errors_checks_and_answer_rule(quiz: Teacher) -> None:
    assert task_type(HARD) == "quiz:hard"
    assert task_type(EASY) == "quiz"
    failed = Episode(
        HARD,
        ["open(page=p9)", "guess(x=1)", "answer paris"],
        ["Error: page 'p9' not found", "ok", "wrong"],
        False,
    )
    lessons = RuleSummariser().lessons(failed)
    principles = [x.principle for x in lessons]
    assert principles[0] == "Open only the pages open listed."  # the family's error rule, {tool} filled
    assert "Read a page before guessing." in principles  # the family's check
    solved = Episode(HARD, ["open(page=p1)", "answer paris"], ["Paris is ...", "right"], True)
    bank = distill([solved, failed])
    template = next(s for s in bank.skills if s.kind == "task")
    assert template.when_to_apply == "quiz:hard: hard quizzes"  # the family's description
    wrong = Episode(EASY, ["open(page=p1)", "answer rome"], ["Paris is ...", "wrong"], False)
    assert RuleSummariser().lessons(wrong)[-1].principle == "Quote the page the answer is on."


def test_without_a_teacher_an_episode_gets_the_generic_rules_alone() -> None:
    e = Episode(
        HARD,
        ["open(page=p9)", "guess(x=1)", "answer paris"],
        ["Error: page 'p9' not found", "ok", "wrong"],
        False,
    )
    assert e.task_type == "general"
    lessons = RuleSummariser().lessons(e)
    assert lessons[0].principle.startswith("When open returns an error, read it")
    assert "Read a page before guessing." not in [x.principle for x in lessons]


def test_the_summariser_names_no_family_and_no_tool() -> None:
    import stepcredit.feedback.skills as skills

    names = set(FAMILIES) | {t.name for cls in FAMILIES.values() for t in cls.tools}
    for path in Path(inspect.getfile(skills)).parent.glob("*.py"):
        code = re.sub(r'"""(?:.|\n)*?"""', "", path.read_text())  # docstrings may give examples
        code = re.sub(r"#.*", "", code)
        found = sorted(n for n in names if re.search(rf"(?<![\w.])(?<!def ){re.escape(n)}(?!\w)", code))
        assert not found, f"{path.name} names {found}"


@pytest.mark.parametrize(
    ("family", "message"),
    [("", "lower-case word"), ("Quiz", "lower-case word"), ("general", "other than 'general'"), (3, "lower-case")],
)
def test_register_teacher_checks_the_family(family: object, message: str, quiz: Teacher) -> None:
    bad = type("Bad", (Teacher,), {"family": family})()
    with pytest.raises(ValueError, match=message):
        register_teacher(bad)
    with pytest.raises(TypeError, match="needs a Teacher"):
        register_teacher(object())  # type: ignore[arg-type]
