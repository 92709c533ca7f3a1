"""Summarisers, which turn episodes into skills (SkillRL's teacher): ``RuleSummariser``, our rule-based
stand-in, whose generic rules hold for any tool-use episode and whose family rules come from each
environment family's teacher (``stepcredit.envs.teaching``), and ``LLMSummariser``, which asks any
prompt -> text callable."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from stepcredit.core.errors import show
from stepcredit.envs.actions import parse_action
from stepcredit.envs.teaching import GENERAL_ANSWER, Lesson, abstract, abstract_action, error_line, teacher_of
from stepcredit.feedback.skills.bank import (
    KINDS,
    Skill,
    SkillBankError,
    SkillKind,
    _norm,
    _parse_json,
    _skill_entry,
    _text,
)
from stepcredit.feedback.skills.episodes import Episode

__all__ = ["LLMSummariser", "Lesson", "RuleSummariser", "Summariser"]


def _describe(t: str) -> str:
    """A few words on what tasks of type ``t`` ask (the ``when_to_apply`` of a plan template)."""
    teacher = teacher_of(t)
    return teacher.describe(t.partition(":")[2]) if teacher is not None else "any task"


# ---------------------------------------------------------------------------------------------- summarisers
class Summariser(Protocol):
    """Anything that turns episodes into skills (SkillRL: a teacher LLM): ``summariser(episodes)``."""

    def __call__(self, episodes: Sequence[Episode]) -> list[Skill]: ...


_NUM = re.compile(r"-?\d+(?:\.\d+)?")

# (pattern in the error text, principle) for any tool's errors — tried before the family's own rules
# (``Teacher.error_rules``), the first match wins; {tool} is the tool's name
_ERROR_RULES: tuple[tuple[str, str], ...] = (
    ("malformed action", "Write one action per turn: name(arg=value, ...) on one line, or answer <value>."),
    ("unknown tool", "Call only the tools the prompt lists, by their exact names."),
    (
        r"needs argument|has no argument|must be an? (?:integer|number|string)|out of range",
        "Pass {tool} exactly the arguments of its signature, each of the right type.",
    ),
)


def _error_principle(error: str, tool: str, task_type: str) -> str:
    teacher = teacher_of(task_type)
    for pattern, principle in _ERROR_RULES + (teacher.error_rules if teacher is not None else ()):
        if re.search(pattern, error):
            return principle.format(tool=tool)
    return f"When {tool} returns an error, read it and fix the call's arguments; never repeat the same call."


def _numbers(text: str) -> set[str]:
    return {_canonical_number(x) for x in _NUM.findall(text)}


def _canonical_number(x: str | float) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return str(x)
    return str(int(v)) if v.is_integer() else repr(v)


class RuleSummariser:
    """Our rule-based stand-in for SkillRL's teacher LLM. It reads only the episodes' texts and success
    flags. Its own rules hold for any tool-use episode; the family rules are asked of the teacher of the
    episode's family (``stepcredit.envs.teaching.teacher_of(task_type)``), so the summariser names no
    family, and an episode of a family without a teacher gets the generic rules alone.

    **Successes → plan templates** (kind ``task``): the action sequence with entities abstracted
    (``abstract_action``), joined by `` -> ``; equal templates of one task type are merged and counted;
    the ``max_templates`` most frequent per type are kept (ties: text order).

    **Failures → lessons** (kind ``mistake``: ``title`` the mistake, ``when_to_apply`` the trigger,
    ``principle`` the rule's sentence), from each failed episode:

    * every tool error: an ``Error: …`` observation after a call — trigger: the tool and its abstracted
      error text, mistake: the abstracted action, principle: chosen by the error text (the generic rules,
      then the family's ``Teacher.error_rules``);
    * the first ungrounded argument (a value that neither the prompt nor an earlier observation shows,
      e.g. a misspelt name or an altered operand; only when no step was cut off, ``Episode.skipped``);
    * the first family check that fails (``Teacher.check``; each teacher's docstring lists its checks);
    * how the episode ended: the turn budget ran out (the most repeated call, or calling without
      answering), or — when nothing above explained the failure — a wrong final answer (the family's
      ``Teacher.ending`` lesson when it names one, else its ``Teacher.answer_principle``).

    Lessons of one task type with the same principle are merged and counted (the most frequent trigger
    and mistake represent them); the ``max_lessons`` most frequent per type are kept. A principle that
    appears in the lessons of ``min_families`` or more families becomes one general skill instead
    (``when_to_apply``: "any task (seen in calculator, lookup tasks)").
    Output order: general skills, then per task type (sorted) its templates, then its lessons.
    """

    def __init__(self, *, max_templates: int = 3, max_lessons: int = 5, min_families: int = 2) -> None:
        for name, value in (("max_templates", max_templates), ("max_lessons", max_lessons)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if isinstance(min_families, bool) or not isinstance(min_families, int) or min_families < 2:
            raise ValueError(f"min_families must be an integer >= 2, got {min_families!r}")
        self.max_templates, self.max_lessons, self.min_families = max_templates, max_lessons, min_families

    def __repr__(self) -> str:
        return (
            f"RuleSummariser(max_templates={self.max_templates}, max_lessons={self.max_lessons}, "
            f"min_families={self.min_families})"
        )

    # ------------------------------------------------------------------ the whole batch
    def __call__(self, episodes: Sequence[Episode]) -> list[Skill]:
        templates: dict[str, collections.Counter[str]] = {}
        lessons: dict[str, dict[str, list[Lesson]]] = {}  # type -> principle -> instances
        for e in episodes:
            if e.success:
                # SkillRL's refinement drops the noise: steps the tools rejected are no part of the plan
                steps = [a for a, o in zip(e.actions, e.observations, strict=True) if error_line(o) is None]
                if steps:
                    plan = " -> ".join(abstract_action(a) for a in steps)
                    templates.setdefault(e.task_type, collections.Counter())[plan] += 1
            else:
                for lesson in self.lessons(e):
                    lessons.setdefault(e.task_type, {}).setdefault(lesson.principle, []).append(lesson)

        families: dict[str, set[str]] = {}
        for t, by_principle in lessons.items():
            for principle in by_principle:
                families.setdefault(principle, set()).add(t.partition(":")[0])
        promoted = sorted(p for p, fams in families.items() if len(fams) >= self.min_families)

        out: list[Skill] = []
        for principle in promoted:
            instances = [x for t in sorted(lessons) for x in lessons[t].get(principle, [])]
            when = f"any task (seen in {', '.join(sorted(families[principle]))} tasks)"
            out.append(Skill(_rule_id("gen", principle), instances[0].title, principle, when, "general"))
        for t in sorted(set(templates) | set(lessons)):
            ranked = sorted(templates.get(t, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            for plan, n in ranked[: self.max_templates]:
                title = f"Plan that worked ({n} run{'s' if n > 1 else ''})"
                out.append(Skill(_rule_id("tsk", t + plan), title, plan, f"{t}: {_describe(t)}", "task", t))
            kept = [(p, xs) for p, xs in lessons.get(t, {}).items() if p not in promoted]
            kept.sort(key=lambda px: (-len(px[1]), px[0]))
            for principle, instances in kept[: self.max_lessons]:
                rep = _representative(instances)
                out.append(Skill(_rule_id("err", t + principle), rep.mistake, principle, rep.trigger, "mistake", t))
        return out

    # ------------------------------------------------------------------ one failed episode
    def lessons(self, e: Episode) -> list[Lesson]:
        """The lessons of one failed episode, in the order the rules above list them."""
        out = self._tool_errors(e)
        cause = None
        if e.skipped == 0:
            cause = self._ungrounded(e)
        teacher = teacher_of(e.task_type)
        if cause is None and teacher is not None:
            cause = teacher.check(e, e.task_type.partition(":")[2])
        if cause is not None:
            out.append(cause)
        ending = self._ending(e, explained=cause is not None or bool(out))
        if ending is not None:
            out.append(ending)
        return list(dict.fromkeys(out))

    @staticmethod
    def _tool_errors(e: Episode) -> list[Lesson]:
        out = []
        for action, obs in zip(e.actions, e.observations, strict=True):
            error = error_line(obs)
            if error is None:
                continue
            parsed = parse_action(action)
            tool = parsed.calls[0].name if parsed.calls else "the action"
            if parsed.calls and len(parsed.calls) > 1:  # the call whose result is the error line
                lines = obs.splitlines()
                if len(lines) == len(parsed.calls):
                    tool = next(
                        c.name for c, line in zip(parsed.calls, lines, strict=True) if line.startswith("Error:")
                    )
            shown = abstract(error)
            trigger = f"calling {tool} (it answered: {shown})" if parsed.calls else f"acting (it answered: {shown})"
            principle = _error_principle(error, tool, e.task_type)
            out.append(Lesson("Fix tool errors", trigger, abstract_action(action), principle))
        return out

    @staticmethod
    def _ungrounded(e: Episode) -> Lesson | None:
        text, numbers = _norm(e.prompt), _numbers(e.prompt)  # what the agent has seen so far
        for action, obs in zip(e.actions, e.observations, strict=True):
            parsed = parse_action(action)
            for call in parsed.calls:
                for arg, value in call.arguments.items():
                    if isinstance(value, bool):
                        continue
                    if isinstance(value, int | float):
                        ok = _canonical_number(value) in numbers
                    elif isinstance(value, str):
                        ok = _norm(value) in text
                    else:
                        ok = True
                    if not ok:
                        return Lesson(
                            "Use values you have seen",
                            f"calling {call.name} with a {arg} that neither the task nor a tool result showed",
                            abstract_action(action),
                            "Copy every argument exactly from the task or an earlier tool result; never guess "
                            "or alter a value.",
                        )
            text, numbers = f"{text}\n{_norm(obs)}", numbers | _numbers(obs)
        return None

    # ------------------------------------------------------------------ the end of the episode
    @staticmethod
    def _ending(e: Episode, *, explained: bool) -> Lesson | None:
        if not e.actions:
            return None
        last = parse_action(e.actions[-1])
        if last.answer is None:
            counts = collections.Counter(e.actions)
            repeated = max(counts.items(), key=lambda kv: (kv[1], -e.actions.index(kv[0])))
            if repeated[1] > 1:
                return Lesson(
                    "Do not repeat calls",
                    "the turn budget ran out before an answer",
                    f"repeating {abstract_action(repeated[0])}",
                    "Do not repeat a call whose result you already have; once the results the task needs "
                    "are in, answer.",
                )
            return Lesson(
                "Answer within the turn budget",
                "the turn budget ran out before an answer",
                "calling tools without ever answering",
                "Make only the calls the task needs and answer as soon as their results are in.",
            )
        if explained:
            return None
        teacher, kind = teacher_of(e.task_type), e.task_type.partition(":")[2]
        lesson = teacher.ending(e, kind) if teacher is not None else None
        if lesson is not None:
            return lesson
        answer = abstract_action(e.actions[-1])
        principle = teacher.answer_principle(kind) if teacher is not None else GENERAL_ANSWER
        return Lesson("Check the answer before giving it", "giving the final answer", answer, principle)


def _representative(instances: Sequence[Lesson]) -> Lesson:
    counts = collections.Counter((x.trigger, x.mistake) for x in instances)
    (trigger, mistake), _ = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return Lesson(instances[0].title, trigger, mistake, instances[0].principle)


def _rule_id(prefix: str, text: str) -> str:
    return f"{prefix}_{hashlib.blake2b(text.encode('utf-8', 'replace'), digest_size=5).hexdigest()}"


class LLMSummariser:
    """The SkillRL path: any ``Callable[[str], str]`` (an LLM behind an API, a local model, a test fake)
    as the teacher. ``prompt(episodes)`` adapts SkillRL's distillation / ``analyze_failures`` prompt: the
    episodes (task, task type, outcome, the steps with observations clipped to ``max_observation``
    characters), the titles of ``existing`` skills to avoid, and the output format. The reply is parsed
    strictly (``parse``): a JSON array — optionally inside one Markdown code fence — of at most
    ``max_skills`` objects with exactly ``title``, ``principle``, ``when_to_apply`` and optionally
    ``kind``, ``task_type``, ``skill_id``; anything else raises ``SkillBankError`` naming the item and
    field. Skill ids are assigned here (``llm_001``, …), as SkillRL reassigns the teacher's ids.
    """

    def __init__(
        self,
        fn: Callable[[str], str],
        *,
        max_skills: int = 3,
        max_observation: int = 200,
        existing: Sequence[Skill] = (),
    ) -> None:
        if not callable(fn):
            raise TypeError(f"LLMSummariser needs a callable prompt -> text, got {type(fn).__name__}")
        for name, value in (("max_skills", max_skills), ("max_observation", max_observation)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.fn, self.max_skills, self.max_observation = fn, max_skills, max_observation
        self.existing = tuple(existing)

    def prompt(self, episodes: Sequence[Episode]) -> str:
        examples = []
        for i, e in enumerate(episodes, 1):
            steps = "\n".join(
                f"  Action: {a}\n  Observation: {o[: self.max_observation]}"
                for a, o in zip(e.actions, e.observations, strict=True)
            )
            examples.append(
                f"Example {i}:\nTask: {e.prompt}\nTask Type: {e.task_type}\n"
                f"Outcome: {'SUCCESS' if e.success else 'FAILURE'}\nTrajectory:\n{steps}\n"
            )
        titles = [s.title if s.task_type is None else f"[{s.task_type}] {s.title}" for s in self.existing]
        return (
            "Analyze these agent episodes and write skills for a skill bank.\n"
            "From successful episodes, write plan templates with entities abstracted ([N], [ID], [NAME]); "
            "from failed ones, write mistakes to avoid (title: the bad action, when_to_apply: the trigger "
            "condition, principle: what to do instead).\n\n"
            f"EPISODES:\n{''.join(examples)}\n"
            f"EXISTING SKILL TITLES (do not duplicate these):\n{json.dumps(titles)}\n\n"
            f"Return ONLY a JSON array of 1-{self.max_skills} skills. Each skill is an object with "
            '"title" (3-5 words), "principle" (1-2 sentences), "when_to_apply", "kind" ("general", "task" or '
            '"mistake") and "task_type" (one of the task types above, or null for a general skill).\n'
        )

    def __call__(self, episodes: Sequence[Episode]) -> list[Skill]:
        types = sorted({e.task_type for e in episodes})
        reply = self.fn(self.prompt(episodes))
        return self.parse(reply, default_task_type=types[0] if len(types) == 1 else None)

    def parse(self, reply: Any, *, default_task_type: str | None = None, source: str = "LLM reply") -> list[Skill]:
        """The skills of a reply (see the class docstring). ``default_task_type``: the type of items that
        name none (their ``kind`` defaults to ``task`` then, else ``general``)."""
        text = _text(reply, source)
        fenced = re.fullmatch(r"\s*```(?:json)?[ \t]*\n(.*)\n```\s*", text, re.DOTALL)
        data = _parse_json(fenced.group(1) if fenced else text, source)
        if not isinstance(data, list):
            raise SkillBankError(f"expected a JSON array of skills, got {show(data)}", source=source, field="$")
        if not data:
            raise SkillBankError("expected at least one skill, got an empty array", source=source, field="$")
        out = []
        for i, item in enumerate(data[: self.max_skills]):
            where = f"[{i}]"
            if not isinstance(item, dict):
                raise SkillBankError(f"expected a skill object, got {show(item)}", source=source, field=where)
            entry = dict(item)
            if "skill_id" in entry and not isinstance(entry["skill_id"], str):
                raise SkillBankError(
                    f"expected a string, got {show(entry['skill_id'])}", source=source, field=f"{where}.skill_id"
                )
            entry["skill_id"] = f"llm_{i + 1:03d}"
            kind = entry.get("kind", "task" if default_task_type else "general")
            if kind not in KINDS:
                raise SkillBankError(
                    f"expected one of {', '.join(KINDS)}, got {show(kind)}", source=source, field=f"{where}.kind"
                )
            if kind != "general":
                entry.setdefault("task_type", default_task_type)
            if "when_to_apply" not in entry:
                raise SkillBankError("missing field 'when_to_apply'", source=source, field=where)
            section_type = entry.get("task_type") if kind == "task" else None
            if kind == "task" and not isinstance(section_type, str):
                raise SkillBankError(
                    f"expected a task type for a task skill, got {show(section_type)}",
                    source=source,
                    field=f"{where}.task_type",
                )
            out.append(_skill_entry(entry, cast(SkillKind, kind), section_type, source, where))
        return out
