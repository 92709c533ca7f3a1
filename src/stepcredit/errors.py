"""The one error type for bad rollout data."""

from __future__ import annotations


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
