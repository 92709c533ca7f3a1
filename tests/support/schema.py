"""Helpers for tests that rebuild batches column by column."""

from __future__ import annotations

from torch import Tensor

from stepcredit import Rollouts


def columns_of(r: Rollouts) -> dict[str, Tensor]:
    """A batch's tensor columns that are set, to rebuild it (``Rollouts(**columns_of(r), texts=...)``)."""
    return {k: getattr(r, k) for k in r.columns() if getattr(r, k) is not None}
