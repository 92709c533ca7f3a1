"""The skill bank: ``Skill``, ``SkillBank`` and its JSON form (load, save, validation), and ``render`` /
``strip_skills``, the text block the skills take in a prompt."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from stepcredit.core.errors import clip, show
from stepcredit.envs.teaching import printable
from stepcredit.io.atomic import atomic_write

__all__ = [
    "FORMAT",
    "HEADER",
    "SEPARATOR",
    "Skill",
    "SkillBank",
    "SkillBankError",
    "SkillKind",
    "render",
    "strip_skills",
]

SkillKind = Literal["general", "task", "mistake"]
KINDS: tuple[str, ...] = get_args(SkillKind)
FORMAT = "stepcredit.skills/1"
HEADER = "Skills from past episodes (use the ones that apply):"
SEPARATOR = "\n\n"  # between the rendered block and the observation; the block itself never contains it
_ID = re.compile(r"[A-Za-z0-9_.:+\-]{1,100}")


class SkillBankError(ValueError):
    """A skill bank, a skill or a summariser's output that cannot be used as given: the message names
    where (file or source, then the field path) and what was expected."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.reason, self.source, self.field = message, source, field
        where = [clip(x, 240) for x in (source, field) if x]
        super().__init__(": ".join([*where, clip(message, 480)]))


# ---------------------------------------------------------------------------------------------- skills
@dataclass(frozen=True)
class Skill:
    """One skill, with SkillRL's fields ``skill_id``, ``title``, ``principle``, ``when_to_apply``.

    ``kind``: ``"general"`` (any task; ``task_type`` None), ``"task"`` (one task type's skill, e.g. a plan
    template; ``task_type`` required) or ``"mistake"`` (a lesson; ``task_type`` None for a mistake
    common to every type). For a mistake, SkillRL's ``bad_action`` is ``title``, its
    ``trigger_condition`` is ``when_to_apply`` and its corrective principle is ``principle``.
    """

    skill_id: str
    title: str
    principle: str
    when_to_apply: str = ""
    kind: SkillKind = "general"
    task_type: str | None = None

    def __post_init__(self) -> None:
        _check_skill(self)


def _check_skill(s: Skill) -> None:
    def fail(name: str, expected: str, value: Any) -> SkillBankError:
        return SkillBankError(f"expected {expected}, got {show(value)}", field=f"skill.{name}")

    if not isinstance(s.skill_id, str) or not _ID.fullmatch(s.skill_id):
        raise fail("skill_id", "1-100 letters, digits or _.:+- (no spaces)", s.skill_id)
    for name in ("title", "principle", "when_to_apply"):
        value = getattr(s, name)
        if not isinstance(value, str) or (name != "when_to_apply" and not value.strip()):
            raise fail(name, "a non-empty string" if name != "when_to_apply" else "a string", value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(name, "text encodable as UTF-8 (no lone surrogates)", value) from None
    if s.kind not in KINDS:
        raise fail("kind", f"one of {', '.join(KINDS)}", s.kind)
    if s.task_type is not None and (not isinstance(s.task_type, str) or not _type_ok(s.task_type)):
        raise fail("task_type", "null or a non-empty one-line string", s.task_type)
    if s.kind == "general" and s.task_type is not None:
        raise fail("task_type", "null for a general skill", s.task_type)
    if s.kind == "task" and s.task_type is None:
        raise fail("task_type", "a task type for a task skill", s.task_type)


def _type_ok(t: str) -> bool:
    return bool(t.strip()) and "\n" not in t and "\r" not in t and len(t) <= 200


def _norm(text: str) -> str:
    """The form principles are compared in (dedupe): white space collapsed, case folded."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class SkillBank:
    """General skills, task skills per task type, and mistakes (SkillRL's ``general_skills``,
    ``task_specific_skills``, ``common_mistakes``), in one canonical order: general skills, then task
    skills grouped by type (types in order of first appearance), then mistakes. Skill ids are unique.
    Banks are immutable: ``add`` / ``evolve`` return new ones.
    """

    skills: tuple[Skill, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        skills = tuple(self.skills)
        for i, s in enumerate(skills):
            if not isinstance(s, Skill):
                raise SkillBankError(f"expected a Skill, got {show(s)}", field=f"skills[{i}]")
        ids = collections.Counter(s.skill_id for s in skills)
        dup = sorted(k for k, n in ids.items() if n > 1)
        if dup:
            raise SkillBankError(f"skill ids must be unique; repeated: {', '.join(dup[:5])}", field="skill_id")
        if not isinstance(self.metadata, Mapping):
            raise SkillBankError(f"expected a mapping, got {show(self.metadata)}", field="metadata")
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError, RecursionError):
            raise SkillBankError(
                "expected JSON values only (objects, lists, strings, numbers)", field="metadata"
            ) from None
        types = list(dict.fromkeys(s.task_type for s in skills if s.kind == "task"))
        ordered = (
            [s for s in skills if s.kind == "general"]
            + [s for t in types for s in skills if s.kind == "task" and s.task_type == t]
            + [s for s in skills if s.kind == "mistake"]
        )
        object.__setattr__(self, "skills", tuple(ordered))
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __len__(self) -> int:
        return len(self.skills)

    @property
    def general(self) -> tuple[Skill, ...]:
        return tuple(s for s in self.skills if s.kind == "general")

    @property
    def task_types(self) -> tuple[str, ...]:
        """Every task type the bank holds skills or mistakes for, sorted."""
        return tuple(sorted({s.task_type for s in self.skills if s.task_type is not None}))

    def task_skills(self, task_type: str) -> tuple[Skill, ...]:
        return tuple(s for s in self.skills if s.kind == "task" and s.task_type == task_type)

    def mistakes(self, task_type: str | None) -> tuple[Skill, ...]:
        """The mistakes of ``task_type`` (None: the mistakes common to every type)."""
        return tuple(s for s in self.skills if s.kind == "mistake" and s.task_type == task_type)

    def retrieve(self, task_type: str, top_k: int = 6, *, max_common_mistakes: int = 5) -> list[Skill]:
        """SkillRL's "template" retrieval, in this order: the general skills — every dynamic one
        (``dyn_*``, added by evolution) and then the first static ones up to ``top_k`` in all — then
        every task skill and every mistake of ``task_type``, then the first ``max_common_mistakes``
        mistakes common to all types. Deterministic: bank order within each part."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        general = self.general
        dynamic = [s for s in general if s.skill_id.startswith("dyn_")]
        static = [s for s in general if not s.skill_id.startswith("dyn_")]
        return [
            *dynamic,
            *static[: max(0, top_k - len(dynamic))],
            *self.task_skills(task_type),
            *self.mistakes(task_type),
            *self.mistakes(None)[:max_common_mistakes],
        ]

    def visible(self, task_type: str) -> list[Skill]:
        """Every skill an agent on ``task_type`` could be shown (retrieval without the limits)."""
        return [*self.general, *self.task_skills(task_type), *self.mistakes(task_type), *self.mistakes(None)]

    def add(self, skills: Iterable[Skill]) -> SkillBank:
        """A new bank with ``skills`` appended (ids must stay unique)."""
        return SkillBank((*self.skills, *skills), self.metadata)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """SkillRL's layout: ``general_skills``, ``task_specific_skills`` (type → list),
        ``common_mistakes`` (each with its ``task_type``, null when common to all), ``metadata``."""

        def entry(s: Skill, *, with_type: bool = False) -> dict[str, Any]:
            out: dict[str, Any] = {
                "skill_id": s.skill_id,
                "title": s.title,
                "principle": s.principle,
                "when_to_apply": s.when_to_apply,
            }
            if with_type:
                out["task_type"] = s.task_type
            return out

        tasks: dict[str, list[dict[str, Any]]] = {}
        for s in self.skills:
            if s.kind == "task":
                assert s.task_type is not None
                tasks.setdefault(s.task_type, []).append(entry(s))
        return {
            "format": FORMAT,
            "general_skills": [entry(s) for s in self.general],
            "task_specific_skills": tasks,
            "common_mistakes": [entry(s, with_type=True) for s in self.skills if s.kind == "mistake"],
            "metadata": dict(self.metadata),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "<skill bank>") -> SkillBank:
        """A bank from parsed JSON, every field checked (a ``SkillBankError`` names the source, the field
        path and what was expected). Also reads SkillRL's files, whose mistakes are ``{mistake_id,
        description, why_it_happens, how_to_avoid}`` (→ skill_id, title, when_to_apply, principle)."""
        if not isinstance(obj, dict):
            raise SkillBankError(f"expected a JSON object, got {show(obj)}", source=source, field="$")
        allowed = ("format", "general_skills", "task_specific_skills", "common_mistakes", "metadata")
        unknown = sorted(k for k in obj if k not in allowed)
        if unknown:
            raise SkillBankError(
                f"unknown key(s) {', '.join(map(repr, unknown[:5]))}; expected {', '.join(allowed)}",
                source=source,
                field="$",
            )
        if "format" in obj and obj["format"] != FORMAT:
            raise SkillBankError(f"expected {FORMAT!r}, got {show(obj['format'])}", source=source, field="format")
        skills: list[Skill] = []
        for i, item in enumerate(_list(obj.get("general_skills", []), source, "general_skills")):
            skills.append(_skill_entry(item, "general", None, source, f"general_skills[{i}]"))
        tasks = obj.get("task_specific_skills", {})
        if not isinstance(tasks, dict):
            raise SkillBankError(
                f"expected an object of task type -> list of skills, got {show(tasks)}",
                source=source,
                field="task_specific_skills",
            )
        for t, items in tasks.items():
            where = f"task_specific_skills[{t!r:.60}]"
            if not _type_ok(t):
                raise SkillBankError("expected a non-empty one-line task type", source=source, field=where)
            for i, item in enumerate(_list(items, source, where)):
                skills.append(_skill_entry(item, "task", t, source, f"{where}[{i}]"))
        for i, item in enumerate(_list(obj.get("common_mistakes", []), source, "common_mistakes")):
            skills.append(_skill_entry(item, "mistake", None, source, f"common_mistakes[{i}]"))
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise SkillBankError(f"expected a JSON object, got {show(metadata)}", source=source, field="metadata")
        try:
            return cls(tuple(skills), metadata)
        except SkillBankError as exc:
            raise SkillBankError(exc.reason, source=source, field=exc.field) from None

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<skill bank>") -> SkillBank:
        return cls.from_dict(_parse_json(text, source), source=source)

    def save(self, path: str | Path) -> Path:
        """Write the bank as JSON at ``path``, atomically (a temporary file renamed over it)."""
        p = Path(path)
        if p.is_dir():
            raise SkillBankError("is a folder; expected a file name", source=str(p))
        if not p.parent.is_dir():
            raise SkillBankError(f"the folder {str(p.parent)!r} does not exist", source=str(p))
        with atomic_write(p) as f:
            f.write(self.to_json())
        return p

    @classmethod
    def load(cls, path: str | Path) -> SkillBank:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise SkillBankError(f"cannot read ({exc.strerror})", source=str(p)) from None
        return cls.from_json(data, source=str(p))


def _text(data: Any, source: str) -> str:
    """``data`` as text: a string, or bytes that must be UTF-8."""
    if isinstance(data, bytes | bytearray):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SkillBankError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    if not isinstance(data, str):
        raise SkillBankError(f"expected JSON text, got {type(data).__name__}", source=source)
    return data


def _parse_json(data: str | bytes, source: str) -> Any:
    """``json.loads`` with every way it fails as a ``SkillBankError``: not text, not UTF-8, invalid
    JSON, nested too deeply, integers past Python's digit limit."""
    text = _text(data, source)
    try:
        return json.loads(text)
    except RecursionError:
        raise SkillBankError("JSON nested too deeply to read", source=source) from None
    except ValueError as exc:  # JSONDecodeError, and ints past sys.get_int_max_str_digits()
        raise SkillBankError(f"invalid JSON ({str(exc)[:200]})", source=source) from None


def _list(value: Any, source: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SkillBankError(f"expected a list of skills, got {show(value)}", source=source, field=where)
    return value


_FIELDS = ("skill_id", "title", "principle", "when_to_apply")
_SKILLRL_MISTAKE = {"mistake_id": "skill_id", "description": "title", "how_to_avoid": "principle"}


def _skill_entry(item: Any, kind: SkillKind, task_type: str | None, source: str, where: str) -> Skill:
    """One skill of a bank file: an object with exactly SkillRL's fields (plus ``kind`` matching its
    section and ``task_type`` matching its key; mistakes: ``task_type`` null or a type)."""
    if not isinstance(item, dict):
        raise SkillBankError(f"expected a skill object, got {show(item)}", source=source, field=where)
    item = dict(item)
    if kind == "mistake" and "mistake_id" in item:  # SkillRL's common_mistakes entry
        why = item.pop("why_it_happens", "")
        item = {_SKILLRL_MISTAKE.get(k, k): v for k, v in item.items()}
        item.setdefault("when_to_apply", why)
    allowed = (*_FIELDS, "kind", "task_type")
    unknown = sorted(k for k in item if k not in allowed)
    if unknown:
        raise SkillBankError(
            f"unknown key(s) {', '.join(map(repr, unknown[:5]))}; expected {', '.join(allowed)}",
            source=source,
            field=where,
        )
    for name in _FIELDS:
        if name == "when_to_apply" and name not in item:
            continue
        if name not in item:
            raise SkillBankError(f"missing field {name!r}", source=source, field=where)
        if not isinstance(item[name], str):
            raise SkillBankError(f"expected a string, got {show(item[name])}", source=source, field=f"{where}.{name}")
    if item.get("kind", kind) != kind:
        raise SkillBankError(f"expected {kind!r} here, got {show(item['kind'])}", source=source, field=f"{where}.kind")
    got_type = item.get("task_type", task_type)
    if kind != "mistake" and got_type != task_type:
        raise SkillBankError(f"expected {task_type!r}, got {show(got_type)}", source=source, field=f"{where}.task_type")
    if got_type is not None and not isinstance(got_type, str):
        raise SkillBankError(
            f"expected a string or null, got {show(got_type)}", source=source, field=f"{where}.task_type"
        )
    try:
        return Skill(item["skill_id"], item["title"], item["principle"], item.get("when_to_apply", ""), kind, got_type)
    except SkillBankError as exc:  # the field inside the skill, placed under this entry
        inner = (exc.field or "skill").removeprefix("skill")
        raise SkillBankError(exc.reason, source=source, field=f"{where}{inner}") from None


# ---------------------------------------------------------------------------------------------- rendering
def render(skills: Sequence[Skill]) -> str:
    """The compact text block to prepend to a prompt: ``HEADER``, then one line per skill, in the order
    given (retrieval order): ``- {title}: {principle} (when: {when_to_apply})`` for general and task
    skills, ``- Avoid: {title} (when: {when_to_apply}). Instead: {principle}`` for mistakes. Every line
    is printable ASCII; the block holds no blank line (so ``strip_skills`` can find its end). No skills:
    the empty string."""
    if not skills:
        return ""
    lines = [HEADER]
    for s in skills:
        when = f" (when: {printable(s.when_to_apply)})" if s.when_to_apply.strip() else ""
        if s.kind == "mistake":
            lines.append(f"- Avoid: {printable(s.title)}{when}. Instead: {printable(s.principle)}")
        else:
            lines.append(f"- {printable(s.title)}: {printable(s.principle)}{when}")
    return "\n".join(lines)


def strip_skills(text: str) -> str:
    """``text`` without a block ``render`` put in front of it (``SkillPrompt``); other text unchanged."""
    if text.startswith(HEADER + "\n") and SEPARATOR in text:
        return text.split(SEPARATOR, 1)[1]
    return text
