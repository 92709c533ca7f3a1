"""Credit metrics against labels (+1 correct / 0 neutral / −1 wrong). Labels are read here only."""

from __future__ import annotations

from typing import Any

from stepcredit.credit import Credit
from stepcredit.rollouts import Rollouts


def blame_rate(rollouts: Rollouts, credit: Credit, *, success_threshold: float = 1.0) -> dict[str, Any]:
    """Share of correct (+1) tool calls in *failed* trajectories whose credit is negative.

    Uses call labels and ``Credit.per_call`` when the batch has call labels, else step labels and
    ``Credit.per_step``. Returns ``{"unit", "n", "blamed", "rate", "mean_credit"}`` (rate and mean are
    ``None`` when there is no such call).
    """
    r = rollouts
    failed = r.outcome < success_threshold
    if r.call_label is not None:
        unit, label, values, fail = "call", r.call_label, credit.per_call(r), failed[r.step_traj[r.call_step]]
    elif r.label is not None:
        unit, label, values, fail = "step", r.label, credit.per_step(r), failed[r.step_traj]
    else:
        raise ValueError("blame_rate needs call or step labels in the rollouts")
    pick = (label == 1) & fail
    n = int(pick.sum())
    blamed = int((values[pick] < 0).sum())
    return {
        "unit": unit,
        "n": n,
        "blamed": blamed,
        "rate": blamed / n if n else None,
        "mean_credit": float(values[pick].double().mean()) if n else None,
    }
