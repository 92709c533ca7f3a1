"""The one error type for bad rollout data, and ``show``, how a bad value is quoted in a message."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["RolloutError", "show"]

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
            where.append(source)
        if trajectory is not None:
            where.append(f"trajectory {trajectory!r}" + (f" (group {group!r})" if group is not None else ""))
        elif group is not None:
            where.append(f"group {group!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join([", ".join(where), message]) if where else message)
