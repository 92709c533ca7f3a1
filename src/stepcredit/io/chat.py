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

Optional fields are the annotation columns of the schema (``Rollouts`` columns with a chat form),
under their names unless ``ChatFields.renames`` maps them elsewhere: on the record ``tree`` (the
rollout tree a trajectory, a root→leaf path, belongs to), ``confidence`` (a stated confidence; null:
none) and ``rubric`` (a list of boolean verdicts); on assistant messages an intermediate ``reward``,
a ``label`` (−1/0/1, for audits only), a ``state`` key, a ``kind`` (``reason``/``tool_call``/
``answer``), a ``prm`` score and an ``abandoned`` flag; on a call object a ``label``.

``to_chat_records`` / ``write_chat_jsonl`` write the same format back, so a batch round-trips.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from stepcredit.core import (
    COLUMNS,
    TOOL_ERROR,
    TOOL_OK,
    TOOL_UNKNOWN,
    CallRecord,
    Column,
    Rollouts,
    StepKind,
    StepRecord,
    TrajectoryRecord,
    canonical_json,
)
from stepcredit.core.errors import RolloutError, show
from stepcredit.io.atomic import atomic_write

__all__ = [
    "ChatFields",
    "ChatWriter",
    "iter_json_records",
    "parse_record",
    "read_chat_records",
    "read_json",
    "to_chat_records",
    "write_chat_jsonl",
]

PROMPT_ROLES = ("system", "developer", "user")
_MISSING = object()
# the annotation columns a chat record can carry, by level (their json form says how they are written)
_ANNOTATIONS = {
    level: [c for c in COLUMNS.values() if c.json is not None and c.level == level]
    for level in ("trajectory", "step", "call")
}


@dataclass(frozen=True)
class ChatFields:
    """Where a record keeps each field (dotted paths into nested objects).

    ``id`` may name several fields separated by commas (``"task_id,trial"``): the trajectory id is then
    their values joined by ``:``, so ids do not depend on the file they came from. ``renames`` maps an
    annotation column (``label``, ``state``, ``kind``, ``prm``, ``abandoned``, ``tree``,
    ``confidence``, ``rubric``) to another path than its name.
    """

    id: str = "id"
    group: str = "group"
    reward: str = "reward"
    messages: str = "messages"
    step_reward: str = "reward"
    renames: Mapping[str, str] = field(default_factory=dict)

    def path(self, col: Column) -> str:
        return self.renames.get(col.name, col.key)


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

    def parse(self, col: Column, value: Any, at: str) -> Any:
        """An annotation column's value (``None`` when absent or null) or the error naming ``at``."""
        if value is _MISSING:
            return None
        try:
            return col.parse_json(value)
        except ValueError as exc:
            raise self.error(at, str(exc)) from None


# the record-level fields (outcome, step reward, id, group) parse like columns of these JSON forms
_NUMBER = Column("trajectory", None, json="number", name="number")
_NAME = Column("trajectory", None, json="name", name="name")


Paths = list[tuple[Column, str, str]]  # (column, path in the object, record attribute)


def annotation_paths(level: str, fields: ChatFields | None = None) -> Paths:
    """Where the annotation columns of ``level`` are found (calls: under their own names)."""
    return [(c, fields.path(c) if fields else c.key, c.record or c.name) for c in _ANNOTATIONS[level]]


_CALL_PATHS = annotation_paths("call")


def read_annotations(obj: dict[str, Any], paths: Paths, where: _Record, prefix: str = "") -> dict[str, Any]:
    """The record attributes of the annotation columns found in ``obj``."""
    out = {}
    for col, path, attr in paths:
        value = get_path(obj, path)
        out[attr] = None if value is _MISSING else where.parse(col, value, f"{prefix}{path}")
    return out


def content_text(content: Any, where: _Record, field: str) -> str:
    """Message content as text: a string, null, or a list of parts (``text`` parts joined, other typed
    parts such as images kept as a ``[type]`` placeholder)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _text(content, where, field)
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
                raise where.error(field, f"expected content parts with a 'text' string or a 'type', got {show(part)}")
        return _text("".join(parts), where, field)
    raise where.error(field, f"expected a string, null or a list of parts, got {type(content).__name__}")


def _arguments(raw: Any, where: _Record, field: str) -> str:
    if raw is None:
        return "{}"
    try:
        if isinstance(raw, dict):
            try:
                return canonical_json(raw)
            except ValueError:  # an integer past Python's digit limit
                raise where.error(field, "arguments hold a number too long to write as text") from None
        if isinstance(raw, str):
            try:
                return canonical_json(json.loads(raw))
            except ValueError:
                return _text(raw, where, field)  # malformed arguments are the model's output: kept as written
    except RecursionError:
        raise where.error(field, "arguments nested too deeply to read") from None
    raise where.error(field, f"expected a JSON object or a JSON string, got {type(raw).__name__}")


def _text(value: str, where: _Record, field: str) -> str:
    """``value``, checked to be valid Unicode (JSON escapes can smuggle in lone surrogates)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise where.error(field, f"contains a lone surrogate ({value[exc.start]!r}), not valid Unicode") from None
    return value


def _call_id(value: Any, where: _Record, field: str) -> str:
    """A call id as text: a non-empty string or an integer of at most 64 bits."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, str) and value:
        return _text(value, where, field)
    raise where.error(field, f"expected a call id (string), got {show(value)}")


def _parse_call(raw: Any, where: _Record, field: str) -> tuple[str, CallRecord]:
    if not isinstance(raw, dict):
        raise where.error(field, f"expected a tool call object, got {type(raw).__name__}")
    call_id = _call_id(raw.get("id"), where, f"{field}.id")
    fn = raw.get("function")
    spec = fn if isinstance(fn, dict) else raw
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise where.error(f"{field}.name", f"expected a tool name, got {show(name)}")
    _text(name, where, f"{field}.name")
    args = _text(_arguments(spec.get("arguments"), where, f"{field}.arguments"), where, f"{field}.arguments")
    return call_id, CallRecord(name=name, arguments=args, **read_annotations(raw, _CALL_PATHS, where, f"{field}."))


def _tool_ok(msg: dict[str, Any], text: str, where: _Record, field: str) -> int:
    for key in ("error", "is_error"):
        if key in msg:
            flag = msg[key]
            if flag is None:
                return TOOL_UNKNOWN
            if isinstance(flag, bool):
                return TOOL_ERROR if flag else TOOL_OK
            if isinstance(flag, str):  # "true"/"false" as text, or an error message in the field
                word = flag.strip().lower()
                return TOOL_OK if word in ("", "false", "0", "no", "null", "none") else TOOL_ERROR
            raise where.error(f"{field}.{key}", f"expected a boolean, got {type(flag).__name__}")
    return TOOL_ERROR if text.lstrip().startswith("Error") else TOOL_OK


def _calls(raw_calls: Any, where: _Record, at: str) -> list[tuple[str, CallRecord]]:
    raw_calls = raw_calls or []
    if not isinstance(raw_calls, list):
        raise where.error(f"{at}.tool_calls", f"expected a list, got {type(raw_calls).__name__}")
    return [_parse_call(raw, where, f"{at}.tool_calls[{k}]") for k, raw in enumerate(raw_calls)]


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
    step_paths = annotation_paths("step", fields)
    for j, msg in enumerate(messages):
        at = f"{fields.messages}[{j}]"
        if not isinstance(msg, dict):
            raise where.error(at, f"expected a message object, got {type(msg).__name__}")
        role = msg.get("role")
        if role in PROMPT_ROLES:
            text = content_text(msg.get("content"), where, f"{at}.content")
            for call_id, _ in _calls(msg.get("tool_calls"), where, at):
                foreign[call_id] = foreign.get(call_id, 0) + 1
            (observation[-1] if steps else prompt).append(text)
        elif role == "assistant":
            calls = []
            for call_id, call in _calls(msg.get("tool_calls"), where, at):
                pending.setdefault(call_id, deque()).append(call)
                calls.append(call)
            reward = where.parse(_NUMBER, get_path(msg, fields.step_reward), f"{at}.{fields.step_reward}")
            steps.append(
                StepRecord(
                    action=content_text(msg.get("content"), where, f"{at}.content"),
                    calls=calls,
                    reward=0.0 if reward is None else reward,
                    **read_annotations(msg, step_paths, where, f"{at}."),
                )
            )
            observation.append([])
        elif role in ("tool", "function"):
            raw_id = msg.get("tool_call_id", msg.get("id"))
            if raw_id is None:
                raise where.error(f"{at}.tool_call_id", "tool result has no tool_call_id (or id)")
            call_id = _call_id(raw_id, where, f"{at}.tool_call_id")
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
                f"{at}.role", f"unknown role {show(role)}; expected system, developer, user, assistant or tool"
            )
    for call_id, queue in pending.items():
        if queue:
            raise where.error(fields.messages, f"tool call {call_id!r} ({queue[0].name}) has no tool result")
    if not steps:
        raise where.error(fields.messages, "no assistant message: there is no step to credit")
    for step, obs in zip(steps, observation, strict=True):
        step.observation = "\n".join(obs)
    return "\n".join(prompt), steps


def _trajectory_id(obj: dict[str, Any], where: _Record, fields: ChatFields, source: str) -> str:
    paths = [p.strip() for p in fields.id.split(",") if p.strip()]
    parts = []
    for path in paths:
        value = get_path(obj, path)
        if value is _MISSING:
            if len(paths) == 1:
                return source  # no id field: the record's place in its file names it
            raise where.error(path, "missing id field (the trajectory id is built from several fields)")
        name = where.parse(_NAME, value, path)
        if name is None:
            raise where.error(path, "expected a string or integer, got null")
        parts.append(name)
    return ":".join(parts)


def parse_record(obj: Any, source: str, fields: ChatFields = ChatFields()) -> TrajectoryRecord:
    """One chat record → ``TrajectoryRecord`` (raises ``RolloutError`` naming ``source``)."""
    where = _Record(source)
    try:
        return _parse_record(obj, where, source, fields)
    except RolloutError:
        raise
    except RecursionError:  # a record built in Python can nest deeper than any JSON file
        raise where.error("record", "nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit where text is expected
        raise where.error("record", f"cannot read this record ({show(str(exc))})") from None


def _parse_record(obj: Any, where: _Record, source: str, fields: ChatFields) -> TrajectoryRecord:
    if not isinstance(obj, dict):
        raise where.error("record", f"expected a JSON object, got {type(obj).__name__}")
    where.trajectory = _trajectory_id(obj, where, fields, source)
    raw_group = get_path(obj, fields.group)
    if raw_group is _MISSING:
        raise where.error(fields.group, "missing group (the task / prompt id; set the group field name)")
    group = where.parse(_NAME, raw_group, fields.group)
    if group is None:
        raise where.error(fields.group, "expected a string or integer, got null")
    where.group = group
    raw_reward = get_path(obj, fields.reward)
    if raw_reward is _MISSING:
        raise where.error(fields.reward, "missing outcome reward (set the reward field name)")
    if raw_reward is None:
        raise where.error(fields.reward, "expected a number, got null")
    outcome = where.parse(_NUMBER, raw_reward, fields.reward)
    messages = get_path(obj, fields.messages)
    if messages is _MISSING:
        raise where.error(fields.messages, "missing message list (set the messages field name)")
    prompt, steps = parse_messages(messages, where, fields)
    return TrajectoryRecord(
        id=where.trajectory,
        group=where.group,
        outcome=outcome,
        steps=steps,
        prompt=prompt,
        source=source,
        **read_annotations(obj, annotation_paths("trajectory", fields), where),
    )


def parse_json(text: str | bytes, source: str) -> Any:
    """``json.loads`` with every way it can fail as one ``RolloutError`` naming ``source``: invalid JSON,
    integers past Python's digit limit, nesting deeper than the parser's recursion, text that is not
    UTF-8."""
    try:
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise RolloutError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    except RecursionError:
        raise RolloutError("JSON nested too deeply to read", source=source) from None
    except ValueError as exc:  # JSONDecodeError, and ints past sys.get_int_max_str_digits()
        raise RolloutError(f"invalid JSON ({str(exc)[:200]})", source=source) from None


def read_json(path: Path) -> Any:
    """A whole ``.json`` file, or ``RolloutError`` naming the file and what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RolloutError(f"cannot read ({exc.strerror})", source=str(path)) from None
    return parse_json(data, str(path))


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
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            yield parse_json(line, f"{path}:{lineno}"), f"{path}:{lineno}"


def read_chat_records(path: Path, fields: ChatFields = ChatFields(), obj: Any = _MISSING) -> list[TrajectoryRecord]:
    """All trajectories of one chat-format file. Group ids are kept apart by type as well as value: a
    group written as the number ``1`` in one record and the string ``"1"`` in another is refused (the
    two would print the same)."""
    records: list[TrajectoryRecord] = []
    kinds: dict[str, tuple[str, str]] = {}
    for rec, source in iter_json_records(path, obj):
        record = parse_record(rec, source, fields)
        raw = get_path(rec, fields.group)
        kind = "a string" if isinstance(raw, str) else "a number"
        first = kinds.setdefault(record.group, (kind, source))
        if first[0] != kind:
            raise RolloutError(f"the group {record.group!r} is {kind} here but {first[0]} in {first[1]}: two "
                               "different ids that print the same; write every group id as one type",
                               source=source, field=fields.group)
        records.append(record)
    return records


# -------------------------------------------------------------------------------------------- writer
def _json_value(col: Column, value: Any) -> Any:
    if col.json == "kind":
        return StepKind(value).name.lower()
    if col.json == "name":
        return str(value)
    if isinstance(value, float) and value != value:  # NaN: not stated
        return None
    return value


def _present(r: Rollouts, level: str) -> list[tuple[Column, list[Any]]]:
    out = []
    for col in [c for c in r.columns().values() if c.json is not None and c.level == level]:
        value = getattr(r, col.name)
        if value is not None:
            out.append((col, value.cpu().tolist()))
    return out


def to_chat_records(rollouts: Rollouts) -> list[dict[str, Any]]:
    """Chat records (OpenAI format) that the chat loader turns back into the same batch (token spans
    aside). A step's ``kind`` is written only where it differs from what the loader derives."""
    r = rollouts
    t = {
        k: getattr(r.texts, k).to_pylist()
        for k in ("ids", "group_names", "prompt", "action", "observation", "call_name", "call_arguments", "call_result")
    }
    group, outcome = r.group.tolist(), r.outcome.tolist()
    off, coff = r.step_offsets.tolist(), r.call_offsets.tolist()
    kind, reward, call_ok = r.kind.tolist(), r.reward.tolist(), r.call_ok.tolist()
    traj_cols, step_cols, call_cols = _present(r, "trajectory"), _present(r, "step"), _present(r, "call")
    records = []
    for i in range(r.num_trajectories):
        messages: list[dict[str, Any]] = []
        if t["prompt"][i]:
            messages.append({"role": "user", "content": t["prompt"][i]})
        last = off[i + 1] - 1
        for s in range(off[i], off[i + 1]):
            calls = range(coff[s], coff[s + 1])
            msg: dict[str, Any] = {"role": "assistant", "content": t["action"][s], "reward": reward[s]}
            derived = StepKind.TOOL_CALL if calls else (StepKind.ANSWER if s == last else StepKind.REASON)
            for col, values in step_cols:
                if col.name != "kind" or kind[s] != derived:
                    msg[col.key] = _json_value(col, values[s])
            if calls:
                msg["tool_calls"] = []
                for c in calls:
                    call = {
                        "id": f"call_{s}_{c - coff[s]}",
                        "type": "function",
                        "function": {"name": t["call_name"][c], "arguments": t["call_arguments"][c]},
                    }
                    call.update({col.key: _json_value(col, values[c]) for col, values in call_cols})
                    msg["tool_calls"].append(call)
            messages.append(msg)
            for c in calls:
                ok = call_ok[c]
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": f"call_{s}_{c - coff[s]}",
                        "content": t["call_result"][c],
                        "error": None if ok == TOOL_UNKNOWN else ok == TOOL_ERROR,
                    }
                )
            if t["observation"][s]:
                messages.append({"role": "user", "content": t["observation"][s]})
        record = {"id": t["ids"][i], "group": t["group_names"][group[i]], "reward": outcome[i], "messages": messages}
        record.update({col.key: _json_value(col, values[i]) for col, values in traj_cols})
        records.append(record)
    return records


def write_chat_jsonl(rollouts: Rollouts, path: str | Path) -> None:
    """Write one chat record a line (see ``to_chat_records``)."""
    with ChatWriter(path) as out:
        out.write(rollouts)


class ChatWriter:
    """Append batch after batch of rollouts to one chat JSONL file (``write_chat_jsonl`` of their
    concatenation), holding one batch at a time; the file appears whole when the ``with`` block ends
    and not at all after an error or an interrupt. ``rows``: records written."""

    def __init__(self, path: str | Path) -> None:
        self._target = atomic_write(path)
        self._file = self._target.__enter__()
        self.rows = 0

    def __enter__(self) -> ChatWriter:
        return self

    def write(self, rollouts: Rollouts) -> None:
        for rec in to_chat_records(rollouts):
            self._file.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
            self.rows += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._target.__exit__(kind, exc, tb)
