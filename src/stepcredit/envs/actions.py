"""The one action parser of the environments: compact one-line syntax and OpenAI tool calls.

An action is what a policy emits for one step. Two forms are accepted, and both parse to the same
``ParsedAction``:

**Compact** (for tiny models), one line::

    lookup(user=ann)                      a tool call; arguments are name=value pairs
    add(a=3, b=4); mul(a=7, b=5)          several calls in one step, separated by ';'
    answer 42                             the final answer (any text after 'answer ')

A value is an integer (``-12``), a decimal number (``2.5``), a JSON string in double quotes
(``"New York"``), or a bare word of letters, digits and ``_ . - @ :`` (``ann``, ``FL-102``), taken as a
string. Surrounding white space is ignored.

**Chat** (OpenAI tool-call format): an assistant message, as a ``dict`` or its JSON text::

    {"role": "assistant", "content": null,
     "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": "{\\"user\\": \\"ann\\"}"}}]}

``arguments`` is a JSON object text (or an object). A message without ``tool_calls`` is the final
answer: its ``content``.

Anything else is **malformed**: ``parse_action`` never raises; it returns a ``ParsedAction`` whose
``error`` says what was wrong, and the environment turns it into an error observation (label 0: the
step changed nothing). Limits: ``MAX_ACTION_CHARS`` characters, ``MAX_CALLS`` calls per step.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_ACTION_CHARS", "MAX_CALLS", "ParsedAction", "ToolCall", "attempted_call", "call_spans", "format_call",
    "parse_action",
]

MAX_ACTION_CHARS = 4096
MAX_CALLS = 8
Value = int | float | str

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*", re.DOTALL)
_INT = re.compile(r"-?\d{1,30}")
_FLOAT = re.compile(r"-?\d{1,30}\.\d{1,30}")
_WORD = re.compile(r"[A-Za-z0-9_.\-@:]+")


@dataclass(frozen=True)
class ToolCall:
    """One tool call: the tool's name and its arguments (JSON values)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.arguments, sort_keys=True, default=str)))


@dataclass(frozen=True)
class ParsedAction:
    """A parsed action: tool calls, or a final answer, or (malformed) an error message."""

    calls: tuple[ToolCall, ...] = ()
    answer: str | None = None
    error: str | None = None

    @property
    def malformed(self) -> bool:
        return self.error is not None


def format_call(name: str, arguments: Mapping[str, Value]) -> str:
    """The compact text of one call, ``name(k=v, ...)``; strings that are not bare words are quoted."""
    parts = []
    for key, value in arguments.items():
        if isinstance(value, str) and not (_WORD.fullmatch(value) and not _INT.fullmatch(value)):
            text = json.dumps(value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return f"{name}({', '.join(parts)})"


def _bad(message: str) -> ParsedAction:
    return ParsedAction(error=message)


def _split_top(text: str, sep: str) -> list[str] | None:
    """Split on ``sep`` outside double-quoted strings and parentheses; None if quotes or brackets do not close."""
    parts, start, depth, quoted, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if quoted or depth != 0:
        return None
    parts.append(text[start:])
    return parts


def _value(text: str) -> Value | None:
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    if _WORD.fullmatch(text):
        return text
    return None


def _compact_call(text: str) -> ToolCall | str:
    match = _CALL.fullmatch(text)
    if match is None:
        return f"expected a call like name(arg=value), got {_show(text)}"
    name, inner = match.groups()
    arguments: dict[str, Any] = {}
    if inner.strip():
        pieces = _split_top(inner, ",")
        if pieces is None:
            return f"unbalanced quotes or brackets in {_show(text)}"
        for piece in pieces:
            key, eq, raw = piece.partition("=")
            key = key.strip()
            if not eq or not _NAME.fullmatch(key):
                return f"expected arg=value in the arguments of {name}, got {_show(piece)}"
            if key in arguments:
                return f"argument {key!r} of {name} is given twice"
            value = _value(raw)
            if value is None:
                return f"cannot read the value of {key!r} in {name}: {_show(raw)}"
            arguments[key] = value
    return ToolCall(name, arguments)


def _show(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _json_arguments(raw: Any, name: str) -> dict[str, Any] | str:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return f"the arguments of {name} are not valid JSON"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return f"the arguments of {name} must be a JSON object"
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return f"argument {key!r} of {name} must be a number or a string"
        if isinstance(value, float) and not math.isfinite(value):
            return f"argument {key!r} of {name} must be finite"
    return dict(raw)


def _chat(message: Any) -> ParsedAction:
    if not isinstance(message, Mapping):
        return _bad("expected an assistant message (a JSON object)")
    calls = message.get("tool_calls")
    if not calls:
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return _bad("an assistant message needs tool_calls or a text content (the answer)")
        return ParsedAction(answer=content.strip())
    if not isinstance(calls, list):
        return _bad("tool_calls must be a list")
    if len(calls) > MAX_CALLS:
        return _bad(f"at most {MAX_CALLS} tool calls per step, got {len(calls)}")
    parsed = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return _bad('a tool call must be {"type": "function", "function": {"name": ..., "arguments": ...}}')
        arguments = _json_arguments(function.get("arguments"), name)  # type: ignore[union-attr]
        if isinstance(arguments, str):
            return _bad(arguments)
        parsed.append(ToolCall(name, arguments))
    return ParsedAction(calls=tuple(parsed))


def parse_action(action: object) -> ParsedAction:
    """Parse one action (compact text, or an OpenAI assistant message as a dict or JSON text).

    Never raises: a malformed action comes back with ``error`` set."""
    try:
        return _parse(action)
    except RecursionError:  # absurdly nested JSON
        return _bad("the action is nested too deeply")


_ATTEMPT = re.compile(rf"\s*({_NAME.pattern})\s*\(")


def attempted_call(action: str) -> str | None:
    """The tool name a malformed action set out to call — text that opens as ``name(`` — or None."""
    match = _ATTEMPT.match(action) if isinstance(action, str) else None
    return match.group(1) if match else None


def call_spans(action: str) -> list[tuple[int, int]] | None:
    """Character spans ``[start, end)`` of each call in a well-formed compact action (in order), or
    None when the action is not a compact call list (an answer, a chat message, malformed text)."""
    parsed = parse_action(action)
    text = action.lstrip()
    if not parsed.calls or text.startswith("{"):
        return None
    pieces = _split_top(action, ";")
    if pieces is None:
        return None
    spans, offset = [], 0
    for piece in pieces:
        stripped = piece.strip()
        if stripped:
            start = offset + piece.index(stripped[0])
            spans.append((start, start + len(stripped)))
        offset += len(piece) + 1
    return spans if len(spans) == len(parsed.calls) else None


def _parse(action: object) -> ParsedAction:
    if isinstance(action, Mapping):
        return _chat(action)
    if not isinstance(action, str):
        return _bad(f"expected text or an assistant message, got {type(action).__name__}")
    if len(action) > MAX_ACTION_CHARS:
        return _bad(f"the action is longer than {MAX_ACTION_CHARS} characters")
    text = action.strip()
    if not text:
        return _bad("the action is empty")
    if text.startswith("{"):
        try:
            message = json.loads(text)
        except ValueError:
            return _bad("the action starts with '{' but is not valid JSON")
        return _chat(message)
    head, _, rest = text.partition(" ")
    if head == "answer":
        answer = rest.strip()
        return ParsedAction(answer=answer) if answer else _bad("'answer' needs a value")
    if "\n" in text:
        return _bad("a compact action is one line")
    pieces = _split_top(text, ";")
    if pieces is None:
        return _bad(f"unbalanced quotes or brackets in {_show(text)}")
    pieces = [p for p in pieces if p.strip()]
    if not pieces:
        return _bad("the action holds no call")
    if len(pieces) > MAX_CALLS:
        return _bad(f"at most {MAX_CALLS} tool calls per step, got {len(pieces)}")
    calls = []
    for piece in pieces:
        call = _compact_call(piece)
        if isinstance(call, str):
            return _bad(call)
        calls.append(call)
    return ParsedAction(calls=tuple(calls))
