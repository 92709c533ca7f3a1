"""Credit metrics against labels (+1 correct / 0 neutral / −1 wrong). Labels are read here only."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` mask: P(score⁺ > score⁻) + ½ P(tie),
    from average ranks (Mann–Whitney U). NaN when either class is empty."""
    scores = scores.double().flatten()
    positive = positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse = torch.unique(sorted_scores, return_inverse=True)
    first = torch.full((uniq.numel(),), float("inf"), dtype=torch.float64).scatter_reduce_(
        0, inverse, torch.arange(1, scores.numel() + 1, dtype=torch.float64), reduce="amin"
    )
    last = torch.zeros(uniq.numel(), dtype=torch.float64).scatter_reduce_(
        0, inverse, torch.arange(1, scores.numel() + 1, dtype=torch.float64), reduce="amax"
    )
    avg = ((first + last) / 2)[inverse]
    ranks[order] = avg
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
