"""The one error type for bad rollout data, and ``show``, how a bad value is quoted in a message."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["RolloutError", "clip", "name", "show"]

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def show(value: Any) -> str:
    """A short quote of ``value`` for an error message: bounded in size whatever the value is (a
    megabyte string, a list nested thousands deep, an integer of 4000 digits), never its full repr."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return _REPR.repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__}"


def clip(text: str, limit: int = 160) -> str:
    """``text`` on one line and at most ``limit`` characters (the middle elided), for error messages:
    ids, group names and paths come from the data and may be of any length or contain newlines."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[: limit * 2 // 3]}…{text[-(limit // 3 - 1):]}"


def name(value: str) -> str:
    """A name from the data (id, group, field) quoted for a message, bounded."""
    return repr(clip(value, 80))


class RolloutError(ValueError):
    """Rollout data that cannot be used as given.

    The message names where the problem is (source file and record, trajectory id, group) and which
    field is wrong and what was expected, so that one line is enough to find and fix the record.
    """

    def __init__(
        self,
        message: str,
        *,
        trajectory: str | None = None,
        group: str | None = None,
        field: str | None = None,
        source: str | None = None,
    ) -> None:
        self.reason = message
        self.trajectory = trajectory
        self.group = group
        self.field = field
        self.source = source
        where = []
        if source is not None:
            where.append(clip(source, 240))
        if trajectory is not None:
            where.append(f"trajectory {name(trajectory)}" + (f" (group {name(group)})" if group is not None else ""))
        elif group is not None:
            where.append(f"group {name(group)}")
        if field is not None:
            where.append(f"field {name(field)}")
        text = clip(message, 480)
        super().__init__(": ".join([", ".join(where), text]) if where else text)
