"""``ToolEnv``: the gymnasium environment every task family builds on.

Text observation in, text action out (compact syntax or an OpenAI assistant message, see ``actions``).
One episode is one task: ``reset(seed=…, options={"task": i})`` poses task ``i`` of the split (drawn
from the seeded generator when not given); ``step(action)`` runs the action's tool calls, or ends the
episode with its answer, and returns ``(observation, reward, terminated, truncated, info)``.

Reward is sparse: 1.0 on the step that ends a solved task, else 0. ``info`` carries the ground truth:

* ``label``: the step's label, +1 correct / 0 neutral / −1 wrong (the family's labelling rules; a step
  with several calls is −1 if any call is, else +1 if any call is, else 0);
* ``tool_ok``: 1 if every call ran, 0 if one errored, −1 if the step made no call;
* ``calls``: per call ``{name, arguments (canonical JSON), result, ok, label}``;
* ``expert``: the actions an expert would take next (several when the task has several solutions),
  ``mistakes``: ``(kind, action)`` pairs of plausible wrong actions now — what the scripted policies
  act from; ``state_key``: the task's progress as a string (equal keys: the same decision point);
* at the end: ``success``.

Labels and expert actions are for scripted policies and audits; nothing that trains may read them.

Every family's task is a pure function of ``(family, split, task index, knobs)``: the episode seed only
picks the task when none is given (and seeds the family's observation noise), so several episodes of
one task form a group. ``snapshot()`` / ``restore()`` copy the whole mutable state, so a rollout can
branch from any step and replay the same future for the same actions.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import string
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium
import numpy as np
from gymnasium import spaces

from stepcredit.envs.actions import ParsedAction, ToolCall, format_call, parse_action

__all__ = [
    "CORRECT",
    "NEUTRAL",
    "SPLITS",
    "WRONG",
    "CallOutcome",
    "Param",
    "Snapshot",
    "Tool",
    "ToolEnv",
    "distractor_tools",
]

CORRECT, NEUTRAL, WRONG = 1, 0, -1
SPLITS = ("train", "test")
Split = Literal["train", "test"]
MAX_OBSERVATION = 1 << 16
_TYPES: dict[type, str] = {int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class Param:
    """One tool parameter: its name, Python type (int, float or str) and description."""

    name: str
    type: type = str
    doc: str = ""


@dataclass(frozen=True)
class Tool:
    """A tool the agent may call. ``write`` tools change the world (and can doom a task)."""

    name: str
    params: tuple[Param, ...]
    doc: str
    write: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI function schema of the tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.doc,
                "parameters": {
                    "type": "object",
                    "properties": {p.name: {"type": _TYPES[p.type], "description": p.doc} for p in self.params},
                    "required": [p.name for p in self.params],
                },
            },
        }

    def signature(self) -> str:
        return f"{self.name}({', '.join(p.name for p in self.params)})"

    def check(self, arguments: Mapping[str, Any]) -> dict[str, Any] | str:
        """The arguments converted to the declared types, or why they do not fit."""
        names = {p.name for p in self.params}
        unknown = sorted(set(arguments) - names)
        if unknown:
            return f"{self.name} has no argument {unknown[0]!r}; expected {self.signature()}"
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name not in arguments:
                return f"{self.name} needs argument {p.name!r}; expected {self.signature()}"
            value = arguments[p.name]
            if p.type is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    return f"argument {p.name!r} of {self.name} must be an integer, got {value!r:.40}"
                if abs(value) > 10**12:
                    return f"argument {p.name!r} of {self.name} is out of range"
            elif p.type is float:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return f"argument {p.name!r} of {self.name} must be a number, got {value!r:.40}"
                value = float(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)  # ids typed as bare numbers: the string they spell
            elif not isinstance(value, str):
                return f"argument {p.name!r} of {self.name} must be a string"
            out[p.name] = value
        return out


@dataclass
class CallOutcome:
    """What one executed call returns: result text, whether it ran, its label."""

    result: str
    ok: bool = True
    label: int = NEUTRAL


@dataclass
class Snapshot:
    """A copy of an environment's whole mutable state (``ToolEnv.snapshot``)."""

    family: str
    state: Any
    rng_state: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)  # the options of the env it came from (split, depth, …)


def option_names(cls: type) -> tuple[str, ...]:
    """The keyword options an environment class takes: its constructor's, and its bases' while a
    constructor passes ``**knobs`` on; sorted (cached per class: snapshots ask at every step)."""
    if cls in _OPTION_NAMES:
        return _OPTION_NAMES[cls]
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    _OPTION_NAMES[cls] = tuple(sorted(names))
    return _OPTION_NAMES[cls]


_OPTION_NAMES: dict[type, tuple[str, ...]] = {}


_UNPRINTABLE = re.compile(r"[^\t\n\r\x20-\x7e]")


def _printable(text: str) -> str:
    """Observations are printable ASCII (the observation space's charset): other characters become '?'."""
    return _UNPRINTABLE.sub("?", text)


# Tools with nothing to do with any task: present them with ``distractors=k`` (label 0 when called).
_CITIES = ("Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Cairo", "Lima", "Tunis")


def distractor_tools() -> list[tuple[Tool, Callable[[dict[str, Any], np.random.Generator], str]]]:
    """The distractor tools, each with a function producing a plausible, irrelevant result."""
    return [
        (
            Tool("get_weather", (Param("city", str, "city name"),), "Current weather in a city."),
            lambda a, rng: json.dumps({"city": a["city"], "temp_c": int(rng.integers(-5, 35)), "sky": "clear"}),
        ),
        (
            Tool("get_time", (Param("city", str, "city name"),), "Local time in a city."),
            lambda a, rng: json.dumps({"city": a["city"], "time": f"{int(rng.integers(24)):02d}:00"}),
        ),
        (
            Tool(
                "convert_currency",
                (Param("amount", float, "amount"), Param("to", str, "currency code")),
                "Convert an amount in USD to another currency.",
            ),
            lambda a, rng: json.dumps({"amount": round(a["amount"] * 0.9, 2), "currency": a["to"]}),
        ),
        (
            Tool("send_email", (Param("to", str, "address"), Param("text", str, "body")), "Send an email."),
            lambda a, rng: json.dumps({"sent": True}),
        ),
    ]


class ToolEnv(gymnasium.Env[str, Any]):
    """A tool-use task family as a gymnasium environment (see the module docstring).

    Knobs shared by every family: ``split`` ("train" or "test": disjoint task streams), ``depth``
    (how many dependent steps a task needs; each family says what it means), ``distractors`` (how many
    irrelevant tools to offer, 0–4), ``noise`` (probability of irrelevant extra records in a tool
    result), ``max_steps`` (turn budget; default ``default_max_steps(depth)``: ``2 * depth + 4`` unless
    the family says otherwise), ``chat`` (the prompt lists the tools as OpenAI schemas instead of compact
    signatures; both action forms are accepted either way). ``depth`` is at most ``max_depth``.

    A family subclass sets ``family`` and ``doc``, and implements ``_new_task`` (build the task state
    from a generator), ``_call`` (run one checked call on the state and label it), ``_answer`` (judge
    the final answer), ``_expert`` (the correct next actions), ``_mistakes`` (plausible wrong ones),
    ``_progress`` (a key of the decision point) and ``_prompt``; ``tools`` lists the family's tools.
    """

    metadata = {"render_modes": ["ansi"]}  # noqa: RUF012  (gymnasium declares it an instance variable)
    family: ClassVar[str] = ""
    default_depth: ClassVar[int] = 3
    max_depth: ClassVar[int] = 64
    tools: ClassVar[tuple[Tool, ...]] = ()

    @classmethod
    def default_max_steps(cls, depth: int) -> int:
        """The turn budget when ``max_steps`` is not given: room for the task's steps and a few more."""
        return 2 * depth + 4

    def __init__(
        self,
        *,
        split: Split = "train",
        depth: int | None = None,
        distractors: int = 0,
        noise: float = 0.0,
        max_steps: int | None = None,
        chat: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        depth = self.default_depth if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.max_depth:
            raise ValueError(f"depth must be an integer in 1..{self.max_depth} for {self.family}, got {depth!r}")
        if not 0 <= distractors <= len(distractor_tools()):
            raise ValueError(f"distractors must be in 0..{len(distractor_tools())}, got {distractors!r}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.split: Split = split
        self.depth = depth
        self.distractors = distractors
        self.noise = noise
        self.max_steps = self.default_max_steps(depth) if max_steps is None else max_steps
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps!r}")
        self.chat = chat
        self.render_mode = render_mode
        self.observation_space = spaces.Text(max_length=MAX_OBSERVATION, charset=string.printable)
        self.action_space = spaces.Text(max_length=4096, charset=string.printable)
        offered = distractor_tools()[:distractors]
        self._distractor_fns = {t.name: fn for t, fn in offered}
        self._tools = {t.name: t for t in self.tools} | {t.name: t for t, _ in offered}
        self._state: Any = None
        self._meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ family interface
    @abstractmethod
    def _new_task(self, rng: np.random.Generator, index: int) -> Any:
        """The mutable state of task ``index`` of this split, built only from ``rng``."""

    @abstractmethod
    def _prompt(self) -> str:
        """The task statement (the tool list is added by ``ToolEnv``)."""

    @abstractmethod
    def _call(self, call: ToolCall, arguments: dict[str, Any]) -> CallOutcome:
        """Run one family tool call (arguments already checked against the tool) on the state."""

    @abstractmethod
    def _answer(self, answer: str) -> tuple[bool, int]:
        """Judge the final answer: (task solved, label of the answering step)."""

    @abstractmethod
    def _expert(self) -> list[str]:
        """The actions (compact syntax) a correct agent may take next; several if the task allows."""

    @abstractmethod
    def _mistakes(self) -> list[tuple[str, str]]:
        """Plausible wrong actions now, as (kind, compact action) pairs; kinds are family-specific."""

    @abstractmethod
    def _progress(self) -> str:
        """A key of the decision point: equal keys when the agent's knowledge and the world agree."""

    def reference_answer(self) -> str | None:
        """The answer that solves the current task, as the verifier holds it (what the outcome reward
        compares against), or None where the family has no single answer (booking: a goal state).

        This is the verifier's ground truth, not a step label: Critique-GRPO's ground-truth critiques
        and DRO's R3 reference tokens are built from it."""
        if self._state is None:
            raise RuntimeError("call reset() before reference_answer()")
        return self._reference()

    def _reference(self) -> str | None:
        return None

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        index = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset option(s): {sorted(options)}; expected 'task'")
        if index is None:
            index = int(self.np_random.integers(2**31))
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            raise ValueError(f"options['task'] must be a non-negative integer, got {index!r}")
        index = int(index)
        salt = sum(map(ord, self.family)) * 1_000_003
        task_rng = np.random.default_rng([salt, SPLITS.index(self.split), self.depth, index])
        self._state = self._new_task(task_rng, index)
        self._meta = {"task": f"{self.family}/{self.split}/{index}", "steps": 0, "done": False}
        obs = _printable(self._prompt() + "\n" + self._tool_text())
        return obs, self._info(task=self._meta["task"], prompt=obs, tools=self.tool_schemas())

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._meta["done"]:
            raise RuntimeError("the episode has ended; call reset()")
        self._meta["steps"] += 1
        parsed = parse_action(action)
        reward, terminated = 0.0, False
        calls: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        if parsed.malformed:
            obs, label, tool_ok = f"Error: malformed action: {parsed.error}", NEUTRAL, -1
        elif parsed.answer is not None:
            success, label = self._answer(parsed.answer)
            obs, tool_ok, terminated = ("Correct." if success else "The task is not solved."), -1, True
            reward = 1.0 if success else 0.0
            extra["success"] = success
        else:
            obs, label, calls = self._run_calls(parsed)
            tool_ok = int(all(c["ok"] for c in calls))
        truncated = not terminated and self._meta["steps"] >= self.max_steps
        if truncated:
            extra["success"] = False
        self._meta["done"] = terminated or truncated
        info = self._info(label=label, tool_ok=tool_ok, calls=calls, answer=parsed.answer, **extra)
        if parsed.malformed:
            info["error"] = parsed.error
        return _printable(obs)[:MAX_OBSERVATION], reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._state is None:
            return None
        return f"{self._meta['task']} step {self._meta['steps']}: {self._progress()}"

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> Snapshot:
        """A copy of the whole mutable state (task state, step count, generator)."""
        if self._state is None:
            raise RuntimeError("call reset() before snapshot()")
        rng_state = dict(self.np_random.bit_generator.state)
        return Snapshot(self.family, copy.deepcopy(self._state), rng_state, dict(self._meta), self._setting())

    def restore(self, snapshot: Snapshot) -> None:
        """Put the environment back in ``snapshot``'s state (the snapshot stays reusable). The snapshot
        must come from an environment of the same family and options (split, depth, …)."""
        if not isinstance(snapshot, Snapshot) or snapshot.family != self.family:
            raise ValueError(f"expected a snapshot of a {self.family} environment")
        mine = self._setting() if snapshot.setting else {}  # a snapshot that records no setting is not checked
        differ = sorted(k for k in set(mine) | set(snapshot.setting) if mine.get(k) != snapshot.setting.get(k))
        if differ:
            shown = ", ".join(f"{k} {snapshot.setting.get(k)!r} (this env: {mine.get(k)!r})" for k in differ)
            raise ValueError(f"the snapshot comes from a {self.family} environment with other options: {shown}")
        self._state = copy.deepcopy(snapshot.state)
        self.np_random.bit_generator.state = snapshot.rng_state
        self._meta = dict(snapshot.meta)

    def _setting(self) -> dict[str, Any]:
        """The options this environment was made with (those it keeps as attributes of the same name)."""
        return {k: getattr(self, k) for k in option_names(type(self)) if k != "render_mode" and hasattr(self, k)}

    # ------------------------------------------------------------------ helpers
    def tool_schemas(self) -> list[dict[str, Any]]:
        """The OpenAI schemas of every tool offered (family tools, then distractors)."""
        return [t.schema() for t in self._tools.values()]

    def _tool_text(self) -> str:
        if self.chat:
            return "Tools: " + json.dumps(self.tool_schemas(), separators=(",", ":"))
        return "Tools: " + " ".join(t.signature() for t in self._tools.values()) + " answer(value)"

    def _info(self, **kw: Any) -> dict[str, Any]:
        ended = self._meta["done"]
        return {
            "task": self._meta["task"],
            "step": self._meta["steps"],
            "state_key": self._progress(),
            "expert": [] if ended else self._expert(),
            "mistakes": [] if ended else self._mistakes(),
            **kw,
        }

    def _run_calls(self, parsed: ParsedAction) -> tuple[str, int, list[dict[str, Any]]]:
        results, calls = [], []
        for call in parsed.calls:
            tool = self._tools.get(call.name)
            if tool is None:
                checked: dict[str, Any] | str = f"unknown tool {call.name!r}; tools: {', '.join(self._tools)}"
            else:
                checked = tool.check(call.arguments)
            if isinstance(checked, str):
                outcome = CallOutcome(f"Error: {checked}", ok=False, label=NEUTRAL)
            elif call.name in self._distractor_fns:
                outcome = CallOutcome(self._distractor_fns[call.name](checked, self.np_random), label=NEUTRAL)
            else:
                outcome = self._call(call, checked)
            results.append(outcome.result)
            calls.append(
                {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments, sort_keys=True, separators=(",", ":")),
                    "result": outcome.result,
                    "ok": int(outcome.ok),
                    "label": outcome.label,
                }
            )
        labels = [c["label"] for c in calls]
        label = WRONG if WRONG in labels else CORRECT if CORRECT in labels else NEUTRAL
        return "\n".join(results), label, calls

    @staticmethod
    def call_text(name: str, **arguments: Any) -> str:
        """A compact action text (``format_call``), for families' expert and mistake lists."""
        return format_call(name, arguments)
