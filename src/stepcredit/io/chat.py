"""OpenAI-style chat logs: one trajectory a record, ``{id, group, reward, messages, ...}``.

Accepted containers: JSONL (one record a line) or a JSON list of records. Field names are configurable
(``ChatFields``; dotted paths reach into nested objects, e.g. ``reward_info.reward``), so common log
shapes load without conversion.

How messages become steps:

* every **assistant** message is a step; its ``content`` is the step's action text;
* its ``tool_calls`` (OpenAI ``{id, type, function: {name, arguments: JSON string}}`` or tau2's
  ``{id, name, arguments: dict}``) become the step's calls, arguments kept as canonical JSON (an
  ``arguments`` string that is not valid JSON is model output and is kept verbatim);
* a **tool** message pairs with the earliest still-unanswered call carrying its ``tool_call_id``
  (or ``id``), so call ids may repeat inside a trajectory and parallel calls may be answered in any
  order; it errored when its ``error``/``is_error`` field is true, or, when neither field is there,
  when its content starts with "Error"; an explicit ``"error": null`` means unknown;
* **user** / **system** / **developer** messages before the first assistant turn form the prompt;
  later ones are the observation of the step before them.

Optional record fields: ``tree`` (the rollout tree a trajectory, a root→leaf path, belongs to),
``confidence`` (a stated confidence; null: none) and ``rubric`` (a list of boolean verdicts).
Optional per-step fields on assistant messages: an intermediate ``reward``, a ``label`` (−1/0/1, for
audits only), a ``state`` key, a ``kind`` (``reason``/``tool_call``/``answer``), a ``prm`` score and
an ``abandoned`` flag; a call object may carry a ``label``.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepcredit.errors import RolloutError
from stepcredit.io.records import CallRecord, StepRecord, TrajectoryRecord, canonical_json
from stepcredit.rollouts import TOOL_ERROR, TOOL_OK, TOOL_UNKNOWN, StepKind

PROMPT_ROLES = ("system", "developer", "user")
_MISSING = object()


@dataclass(frozen=True)
class ChatFields:
    """Where a record keeps each field (dotted paths into nested objects)."""

    id: str = "id"
    group: str = "group"
    reward: str = "reward"
    messages: str = "messages"
    step_reward: str = "reward"
    label: str = "label"
    state: str = "state"
    kind: str = "kind"
    tree: str = "tree"
    confidence: str = "confidence"
    rubric: str = "rubric"
    prm: str = "prm"
    abandoned: str = "abandoned"


def get_path(obj: dict[str, Any], path: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``; ``_MISSING`` when any part is absent."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


class _Record:
    """Error helper bound to one record, so every message names where it happened."""

    def __init__(self, source: str, trajectory: str | None = None, group: str | None = None) -> None:
        self.source, self.trajectory, self.group = source, trajectory, group

    def error(self, field: str, message: str) -> RolloutError:
        return RolloutError(message, source=self.source, trajectory=self.trajectory, group=self.group, field=field)


def _number(value: Any, where: _Record, field: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float):
        raise where.error(field, f"expected a number, got {type(value).__name__} {value!r:.60}")
    x = float(value)
    if not math.isfinite(x):
        raise where.error(field, f"expected a finite number, got {x}")
    return x


def _optional_number(value: Any, where: _Record, field: str) -> float | None:
    return None if value is _MISSING or value is None else _number(value, where, field)


def _flag(value: Any, where: _Record, field: str) -> bool:
    if value is _MISSING or value is None:
        return False
    if not isinstance(value, bool):
        raise where.error(field, f"expected a boolean, got {value!r:.60}")
    return value


def _name(value: Any, where: _Record, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise where.error(field, f"expected a string or integer, got {type(value).__name__} {value!r:.60}")
    return str(value)


def _label(value: Any, where: _Record, field: str) -> int | None:
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool) or value not in (-1, 0, 1):
        raise where.error(field, f"expected a label -1, 0 or 1, got {value!r:.60}")
    return int(value)


def content_text(content: Any, where: _Record, field: str) -> str:
    """Message content as text: a string, null, or a list of parts (``text`` parts joined, other typed
    parts such as images kept as a ``[type]`` placeholder)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                parts.append(f"[{part['type']}]")  # a non-text part (image, audio): a placeholder
            else:
                raise where.error(field, f"expected content parts with a 'text' string or a 'type', got {part!r:.60}")
        return "".join(parts)
    raise where.error(field, f"expected a string, null or a list of parts, got {type(content).__name__}")


def _arguments(raw: Any, where: _Record, field: str) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, dict):
        return canonical_json(raw)
    if isinstance(raw, str):
        try:
            return canonical_json(json.loads(raw))
        except json.JSONDecodeError:
            return raw  # malformed arguments are the model's output: keep them as written
    raise where.error(field, f"expected a JSON object or a JSON string, got {type(raw).__name__}")


def _parse_call(raw: Any, where: _Record, field: str) -> tuple[str, CallRecord]:
    if not isinstance(raw, dict):
        raise where.error(field, f"expected a tool call object, got {type(raw).__name__}")
    call_id = raw.get("id")
    if not isinstance(call_id, str | int) or isinstance(call_id, bool) or call_id == "":
        raise where.error(f"{field}.id", f"expected a call id (string), got {call_id!r:.60}")
    fn = raw.get("function")
    spec = fn if isinstance(fn, dict) else raw
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise where.error(f"{field}.name", f"expected a tool name, got {name!r:.60}")
    args = _arguments(spec.get("arguments"), where, f"{field}.arguments")
    label = _label(raw.get("label", _MISSING), where, f"{field}.label")
    return str(call_id), CallRecord(name=name, arguments=args, label=label)


def _tool_ok(msg: dict[str, Any], text: str, where: _Record, field: str) -> int:
    for key in ("error", "is_error"):
        if key in msg:
            flag = msg[key]
            if flag is None:
                return TOOL_UNKNOWN
            if isinstance(flag, bool):
                return TOOL_ERROR if flag else TOOL_OK
            if isinstance(flag, str):  # an error message in the field
                return TOOL_ERROR if flag else TOOL_OK
            raise where.error(f"{field}.{key}", f"expected a boolean, got {type(flag).__name__}")
    return TOOL_ERROR if text.lstrip().startswith("Error") else TOOL_OK


def _kind(value: Any, where: _Record, field: str) -> StepKind | None:
    if value is _MISSING or value is None:
        return None
    try:
        return StepKind[str(value).upper()]
    except KeyError:
        names = [k.name.lower() for k in StepKind]
        raise where.error(field, f"expected one of {names}, got {value!r:.60}") from None


def parse_messages(messages: Any, where: _Record, fields: ChatFields) -> tuple[str, list[StepRecord]]:
    """Turn a chat message list into (prompt text, steps)."""
    if not isinstance(messages, list):
        raise where.error(fields.messages, f"expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise where.error(fields.messages, "the message list is empty")
    prompt: list[str] = []
    steps: list[StepRecord] = []
    observation: list[list[str]] = []
    pending: dict[str, deque[CallRecord]] = {}
    foreign: dict[str, int] = {}  # calls made by the user side (tau2 requestor "user"): observation only
    for j, msg in enumerate(messages):
        at = f"{fields.messages}[{j}]"
        if not isinstance(msg, dict):
            raise where.error(at, f"expected a message object, got {type(msg).__name__}")
        role = msg.get("role")
        if role in PROMPT_ROLES:
            text = content_text(msg.get("content"), where, f"{at}.content")
            for k, raw in enumerate(msg.get("tool_calls") or []):
                call_id, _ = _parse_call(raw, where, f"{at}.tool_calls[{k}]")
                foreign[call_id] = foreign.get(call_id, 0) + 1
            (observation[-1] if steps else prompt).append(text)
        elif role == "assistant":
            raw_calls = msg.get("tool_calls") or []
            if not isinstance(raw_calls, list):
                raise where.error(f"{at}.tool_calls", f"expected a list, got {type(raw_calls).__name__}")
            calls = []
            for k, raw in enumerate(raw_calls):
                call_id, call = _parse_call(raw, where, f"{at}.tool_calls[{k}]")
                pending.setdefault(call_id, deque()).append(call)
                calls.append(call)
            reward = get_path(msg, fields.step_reward)
            state = get_path(msg, fields.state)
            if state is not _MISSING and (isinstance(state, bool) or not isinstance(state, int)):
                raise where.error(f"{at}.{fields.state}", f"expected an integer state key, got {state!r:.60}")
            steps.append(
                StepRecord(
                    action=content_text(msg.get("content"), where, f"{at}.content"),
                    calls=calls,
                    reward=0.0 if reward is _MISSING else _number(reward, where, f"{at}.{fields.step_reward}"),
                    label=_label(get_path(msg, fields.label), where, f"{at}.{fields.label}"),
                    state=None if state is _MISSING else state,
                    kind=_kind(get_path(msg, fields.kind), where, f"{at}.{fields.kind}"),
                    prm=_optional_number(get_path(msg, fields.prm), where, f"{at}.{fields.prm}"),
                    abandoned=_flag(get_path(msg, fields.abandoned), where, f"{at}.{fields.abandoned}"),
                )
            )
            observation.append([])
        elif role in ("tool", "function"):
            call_id = msg.get("tool_call_id", msg.get("id"))
            if call_id is None:
                raise where.error(f"{at}.tool_call_id", "tool result has no tool_call_id (or id)")
            call_id = str(call_id)
            text = content_text(msg.get("content"), where, f"{at}.content")
            queue = pending.get(call_id)
            if queue:
                call = queue.popleft()
                call.result = text
                call.ok = _tool_ok(msg, text, where, at)
            elif foreign.get(call_id):
                foreign[call_id] -= 1
                (observation[-1] if steps else prompt).append(text)
            else:
                raise where.error(
                    f"{at}.tool_call_id", f"tool result for call id {call_id!r}, which no earlier unanswered call has"
                )
        else:
            raise where.error(
                f"{at}.role", f"unknown role {role!r:.40}; expected system, developer, user, assistant or tool"
            )
    for call_id, queue in pending.items():
        if queue:
            raise where.error(fields.messages, f"tool call {call_id!r} ({queue[0].name}) has no tool result")
    if not steps:
        raise where.error(fields.messages, "no assistant message: there is no step to credit")
    for step, obs in zip(steps, observation, strict=True):
        step.observation = "\n".join(obs)
    return "\n".join(prompt), steps


def parse_record(obj: Any, source: str, fields: ChatFields = ChatFields()) -> TrajectoryRecord:
    """One chat record → ``TrajectoryRecord`` (raises ``RolloutError`` naming ``source``)."""
    where = _Record(source)
    if not isinstance(obj, dict):
        raise where.error("record", f"expected a JSON object, got {type(obj).__name__}")
    raw_id = get_path(obj, fields.id)
    where.trajectory = source if raw_id is _MISSING else _name(raw_id, where, fields.id)
    raw_group = get_path(obj, fields.group)
    if raw_group is _MISSING:
        raise where.error(fields.group, "missing group (the task / prompt id; set the group field name)")
    where.group = _name(raw_group, where, fields.group)
    raw_reward = get_path(obj, fields.reward)
    if raw_reward is _MISSING:
        raise where.error(fields.reward, "missing outcome reward (set the reward field name)")
    outcome = _number(raw_reward, where, fields.reward)
    messages = get_path(obj, fields.messages)
    if messages is _MISSING:
        raise where.error(fields.messages, "missing message list (set the messages field name)")
    prompt, steps = parse_messages(messages, where, fields)
    raw_tree = get_path(obj, fields.tree)
    tree = None if raw_tree is _MISSING or raw_tree is None else _name(raw_tree, where, fields.tree)
    raw_rubric = get_path(obj, fields.rubric)
    rubric = None
    if raw_rubric is not _MISSING and raw_rubric is not None:
        if not isinstance(raw_rubric, list) or not all(isinstance(v, bool) for v in raw_rubric):
            raise where.error(
                fields.rubric, f"expected a list of booleans (one verdict per rubric), got {raw_rubric!r:.60}"
            )
        rubric = raw_rubric
    return TrajectoryRecord(
        id=where.trajectory,
        group=where.group,
        outcome=outcome,
        steps=steps,
        prompt=prompt,
        source=source,
        tree=tree,
        confidence=_optional_number(get_path(obj, fields.confidence), where, fields.confidence),
        rubric=rubric,
    )


def read_json(path: Path) -> Any:
    """A whole ``.json`` file, or ``RolloutError`` naming the file and the parse error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RolloutError(f"invalid JSON ({exc})", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise RolloutError(f"not UTF-8 text ({exc})", source=str(path)) from None


def iter_json_records(path: Path, obj: Any = _MISSING) -> Iterator[tuple[Any, str]]:
    """Yield ``(record, source)`` for a JSONL file (one record a line) or a JSON file holding a list
    of records or one record (``obj``: the already parsed JSON file, if at hand)."""
    if path.suffix != ".jsonl":
        obj = read_json(path) if obj is _MISSING else obj
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield item, f"{path}[{i}]"
        else:
            yield obj, str(path)
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RolloutError(f"invalid JSON ({exc})", source=f"{path}:{lineno}") from None
            yield record, f"{path}:{lineno}"


def read_chat_records(path: Path, fields: ChatFields = ChatFields(), obj: Any = _MISSING) -> list[TrajectoryRecord]:
    """All trajectories of one chat-format file."""
    return [parse_record(rec, source, fields) for rec, source in iter_json_records(path, obj)]
