"""Ground-truth labels for individual tool calls, from a task's reference actions.

Labels are for *measuring* credit (audits); no estimator reads them. The rule (shared/data/README.md),
walking a trajectory's calls in order with the reference actions as an unused pool:

* **+1 correct** — same tool name and an argument dict equal to some unused reference action (which
  is consumed; when the reference sets ``compare_args``, only those keys are compared);
  ``transfer_to_human_agents`` is +1 when the reference contains a transfer;
* **−1 wrong** — a write call whose result is not an error and that matches no reference action: it
  moves the database away from the required end state;
* **0 neutral** — everything else (unmatched read-only calls, errored writes).

A step's label is −1 if any of its calls is −1, else +1 if any is +1, else 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stepcredit.core import TOOL_ERROR, TrajectoryRecord
from stepcredit.core.errors import RolloutError, show

__all__ = [
    "AIRLINE_WRITE_TOOLS",
    "REFERENCES_FORMAT",
    "check_actions",
    "check_references",
    "label_calls",
    "read_references",
]

REFERENCES_FORMAT = """\
A JSON object mapping each group (task id) to its reference actions, the calls a correct run makes:
{"task-7": [{"name": "cancel_reservation", "arguments": {"reservation_id": "A1"}},
            {"name": "book_reservation", "arguments": {...}, "compare_args": ["user_id"]}]}
"name" (string) and "arguments" (object) are required; "compare_args" (list of argument names)
compares only those; "requestor": "user" marks an action the user takes (never matched).\
"""

AIRLINE_WRITE_TOOLS = frozenset(
    {
        "book_reservation",
        "cancel_reservation",
        "update_reservation_baggages",
        "update_reservation_flights",
        "update_reservation_passengers",
        "send_certificate",
    }
)
TRANSFER_TOOL = "transfer_to_human_agents"


def _matches(arguments: Any, reference: dict[str, Any]) -> bool:
    ref_args = reference.get("arguments") or {}
    keys = reference.get("compare_args")
    if keys is None:
        return bool(arguments == ref_args)
    if not isinstance(arguments, dict):
        return False
    return all(arguments.get(k) == ref_args.get(k) for k in keys)


def label_calls(
    record: TrajectoryRecord,
    reference_actions: Sequence[dict[str, Any]],
    write_tools: Iterable[str] = AIRLINE_WRITE_TOOLS,
) -> None:
    """Set ``label`` on every call and step of ``record`` in place, by the rule above.

    ``reference_actions`` are ``{name, arguments, compare_args?, requestor?}`` dicts; actions whose
    ``requestor`` is ``"user"`` are the user's to take and are not matched against the agent's calls.
    """
    writes = frozenset(write_tools)
    pool = [a for a in reference_actions if a.get("requestor", "assistant") != "user"]
    used = [False] * len(pool)
    has_transfer = any(a.get("name") == TRANSFER_TOOL for a in pool)
    for step in record.steps:
        for call in step.calls:
            try:
                args = json.loads(call.arguments)
            except (ValueError, RecursionError):
                args = call.arguments
            match = next(
                (i for i, a in enumerate(pool) if not used[i] and a.get("name") == call.name and _matches(args, a)),
                None,
            )
            if match is not None:
                used[match] = True
                call.label = 1
            elif call.name == TRANSFER_TOOL:
                call.label = 1 if has_transfer else 0
            elif call.name in writes and call.ok != TOOL_ERROR:
                call.label = -1
            else:
                call.label = 0
        labels = [c.label for c in step.calls]
        step.label = -1 if -1 in labels else (1 if 1 in labels else 0)


def check_actions(actions: Any, source: str, group: str, prefix: str = "") -> list[dict[str, Any]]:
    """A list of reference actions, or ``RolloutError`` naming the group, the action and the field that
    does not fit ``REFERENCES_FORMAT`` (``prefix``: where the list sits in its file)."""

    def fail(field: str, message: str) -> RolloutError:
        return RolloutError(message, source=source, group=group, field=f"{prefix}{field}" or None)

    if not isinstance(actions, list):
        raise fail("", f"expected a list of reference actions, got {type(actions).__name__}")
    for k, action in enumerate(actions):
        at = f"[{k}]"
        if not isinstance(action, Mapping):
            raise fail(at, f"expected an action object, got {type(action).__name__}")
        if not isinstance(action.get("name"), str) or not action["name"]:
            raise fail(f"{at}.name", f"expected a tool name (string), got {show(action.get('name'))}")
        if not isinstance(action.get("arguments"), Mapping):
            raise fail(f"{at}.arguments", f"expected an arguments object, got {show(action.get('arguments'))}")
        keys = action.get("compare_args")
        if keys is not None and not (isinstance(keys, list) and all(isinstance(x, str) for x in keys)):
            raise fail(f"{at}.compare_args", f"expected a list of argument names or null, got {show(keys)}")
    return [dict(a) for a in actions]


def check_references(refs: Any, source: str = "references") -> dict[str, list[dict[str, Any]]]:
    """``refs`` as ``{group: [reference action]}``, or ``RolloutError`` naming the group, the action
    and the field that does not fit ``REFERENCES_FORMAT``."""
    if not isinstance(refs, Mapping):
        raise RolloutError(
            f"expected a JSON object {{group: [reference actions]}}, got {type(refs).__name__}", source=source
        )
    return {str(group): check_actions(actions, source, str(group)) for group, actions in refs.items()}


def read_references(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Reference actions from a JSON file (``REFERENCES_FORMAT``), checked."""
    from stepcredit.io.chat import read_json

    return check_references(read_json(Path(path)), str(path))
