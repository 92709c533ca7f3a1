"""Episodes as text (``Episode``, read from a rollout batch by ``episodes_from_batch``), their task
types (``task_type``) and success rates, and the abstraction of their entities (``abstract``,
``abstract_action``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from stepcredit.core.errors import show
from stepcredit.envs.actions import parse_action
from stepcredit.feedback.skills.bank import strip_skills

if TYPE_CHECKING:
    from stepcredit.core import Rollouts
    from stepcredit.generation.engine import TrainingBatch

__all__ = ["Episode", "abstract", "abstract_action", "episodes_from_batch", "success_rates", "task_type"]

GENERAL = "general"


# ---------------------------------------------------------------------------------------------- task types
_CALC_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
_LOOKUP_KINDS = (  # (kind, keywords that must all appear), first match wins; lookup.py's question texts
    ("total_recent", ("total price", "most recent order")),
    ("priciest_delivered", ("highest unit price", "delivered order")),
    ("category_recent", ("category", "most recent order")),
    ("items_delivered", ("how many items", "delivered orders")),
    ("spend_delivered", ("how much did", "spend", "delivered orders")),
)
_BOOKING_GOAL = re.compile(r"^\s*\d+\.\s+(Book|Cancel|Add)\b", re.MULTILINE)
_BOOKING_KINDS = {"Book": "book", "Cancel": "cancel", "Add": "bags"}


def task_type(prompt: str) -> str:
    """The task type of a prompt, by keywords (SkillRL's ``_detect_task_type``, for our families):

    * ``calculator:<ops>`` — a "Compute <expression> with the tools" prompt; ``<ops>`` are the operations
      the expression contains, in the order add, sub, mul, div, joined by ``+`` (``calculator:add+mul``);
    * ``lookup:<kind>`` — a "Look the data up with the tools" prompt; ``<kind>`` is the question kind of
      ``LookupEnv`` (``total_recent``, ``priciest_delivered``, ``category_recent``, ``items_delivered``,
      ``spend_delivered``), or ``lookup`` alone when the question matches none;
    * ``booking:<goals>`` — an "airline desk agent" prompt; ``<goals>`` are the request kinds it lists, in
      the order book, cancel, bags (``booking:book+cancel``);
    * ``general`` — anything else.

    A block of skills in front of the prompt (``SkillPrompt``) is ignored.
    """
    text = strip_skills(prompt)
    low = text.casefold()
    m = re.match(r"\s*Compute (.+?) with the tools", text, re.DOTALL)
    if m:
        found = {_CALC_OPS[o] for o in re.findall(r"(?<=\s)([-+*/])(?=\s)", f" {m.group(1)} ")}
        ops = [op for op in _CALC_OPS.values() if op in found]
        return "calculator:" + "+".join(ops) if ops else "calculator"
    if "look the data up with the tools" in low:
        question = low.split("look the data up", 1)[0]
        kind = next((k for k, words in _LOOKUP_KINDS if all(w in question for w in words)), None)
        return f"lookup:{kind}" if kind else "lookup"
    if "airline desk agent" in low:
        found = {_BOOKING_KINDS[g] for g in _BOOKING_GOAL.findall(text)}
        goals = [g for g in ("book", "cancel", "bags") if g in found]
        return "booking:" + "+".join(goals) if goals else "booking"
    return GENERAL


# ---------------------------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class Episode:
    """One episode as text: the prompt, each step's action and the observation it caused, and whether
    the task was solved. ``task_type``: ``task_type(prompt)`` when left empty. ``skipped``: how many
    earlier steps were cut off (``window``); rules that need the whole history skip what they cannot
    check."""

    prompt: str
    actions: list[str]
    observations: list[str]
    success: bool
    task_type: str = ""
    skipped: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"Episode.prompt must be a string, got {type(self.prompt).__name__}")
        for name in ("actions", "observations"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
                raise TypeError(f"Episode.{name} must be a list of strings, got {show(value)}")
            object.__setattr__(self, name, list(value))
        if len(self.actions) != len(self.observations):
            raise ValueError(
                f"an episode needs one observation per action, got {len(self.actions)} actions and "
                f"{len(self.observations)} observations"
            )
        if not isinstance(self.success, bool):
            raise TypeError(f"Episode.success must be a bool, got {show(self.success)}")
        if not self.task_type:
            object.__setattr__(self, "task_type", task_type(self.prompt))
        if isinstance(self.skipped, bool) or not isinstance(self.skipped, int) or self.skipped < 0:
            raise ValueError(f"Episode.skipped must be a non-negative integer, got {self.skipped!r}")

    def window(self, last_steps: int) -> Episode:
        """The episode with only its last ``last_steps`` steps (SkillRL's failure examples)."""
        cut = max(0, len(self.actions) - last_steps)
        return replace(
            self, actions=self.actions[cut:], observations=self.observations[cut:], skipped=self.skipped + cut
        )


def episodes_from_batch(batch: TrainingBatch | Rollouts, *, success_threshold: float = 1.0) -> list[Episode]:
    """The episodes of a ``TrainingBatch`` (or its ``Rollouts``), one per trajectory, in order.

    Reads only texts and outcomes: ``texts.prompt`` (a skills block in front removed, ``strip_skills``),
    each step's ``texts.action`` and observation (``texts.observation``, or its calls' results joined by
    newlines where the observation is blank, as in logs that keep results per call), and
    ``outcome >= success_threshold`` as success. Labels, expert actions and call labels are never read.
    """
    r: Rollouts = batch.rollouts if hasattr(batch, "rollouts") else batch
    prompts = r.texts.prompt.to_pylist()
    actions = r.texts.action.to_pylist()
    observations = r.texts.observation.to_pylist()
    results = r.texts.call_result.to_pylist()
    soff, coff = r.step_offsets.tolist(), r.call_offsets.tolist()
    outcome = r.outcome.tolist()
    out = []
    for i in range(r.num_trajectories):
        steps = range(soff[i], soff[i + 1])
        obs = [observations[s] or "\n".join(results[coff[s] : coff[s + 1]]) for s in steps]
        out.append(
            Episode(
                strip_skills(prompts[i]),
                [actions[s] for s in steps],
                obs,
                bool(outcome[i] >= success_threshold),
            )
        )
    return out


def success_rates(episodes: Iterable[Episode]) -> dict[str, float]:
    """The success rate of each task type among ``episodes`` (types sorted) — ``evolve``'s input."""
    counts: dict[str, list[int]] = {}
    for e in episodes:
        c = counts.setdefault(e.task_type, [0, 0])
        c[0] += int(e.success)
        c[1] += 1
    return {t: counts[t][0] / counts[t][1] for t in sorted(counts)}


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
