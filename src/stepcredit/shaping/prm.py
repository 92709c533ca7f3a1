"""ReasonFlux-PRM's reward mixing: outcome and aggregated process-reward scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.registry import import_callable, register
from stepcredit.rollouts import Rollouts

Scorer = Callable[[Rollouts], Tensor]


def prm_scores(rollouts: Rollouts, scorer: str | Scorer | None = None) -> Tensor:
    """``[S]`` PRM scores: from ``scorer(rollouts)`` when given, else the ``prm`` column."""
    if scorer is None:
        if rollouts.prm is None:
            raise ValueError("no PRM scores: give a scorer or load rollouts with a prm column")
        return rollouts.prm
    scores = import_callable(scorer, "scorer")(rollouts)
    if scores.shape != (rollouts.num_steps,) or not bool(torch.isfinite(scores).all()):
        raise ValueError(f"the scorer must return {rollouts.num_steps} finite scores, got shape {tuple(scores.shape)}")
    return scores.to(torch.float32)


@register("shaping")
def prm_mix(
    rollouts: Rollouts,
    *,
    beta: float = 0.75,
    aggregate: Literal["mean", "min", "last"] = "mean",
    scorer: str | Scorer | None = None,
    skip_abandoned: bool = True,
) -> Rollouts:
    """ReasonFlux-PRM as an RL reward: mix the outcome with the trajectory's aggregated PRM score.

        R' = (1 − β) · R + β · aggregate_t(prm_t)          (β = 0.75, the released ``BETA``)

    ``aggregate``: mean, min or last step score. Scores come from ``scorer`` (a callable
    ``Rollouts -> [S]``, e.g. ``stepcredit.prm.HFProcessRewardScorer``, or ``module:function``) or the
    ``prm`` column; with a scorer they are also stored in the ``prm`` column. With ``skip_abandoned``
    steps flagged ``abandoned`` are left out of the aggregate, so a given-up branch does not drag the
    reward down (a trajectory whose steps are all abandoned keeps its outcome). A trajectory without
    steps keeps its outcome. Zou et al. 2025, arXiv:2506.18896.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if aggregate not in ("mean", "min", "last"):
        raise ValueError(f"aggregate must be 'mean', 'min' or 'last', got {aggregate!r}")
    r = rollouts
    scores = prm_scores(r, scorer)
    n = r.num_trajectories
    use = torch.ones(r.num_steps, dtype=torch.bool, device=r.device)
    if skip_abandoned and r.abandoned is not None:
        use = ~r.abandoned
    idx, vals = r.step_traj[use], scores[use]
    count = segments.segment_count(idx, n)
    if aggregate == "mean":
        agg = segments.segment_mean(vals, idx, n)
    elif aggregate == "min":
        agg, _ = segments.segment_min_max(vals, idx, n)
    else:
        last = segments.segment_last(idx, n, positions=torch.nonzero(use).squeeze(1))
        agg = scores[last.clamp_min(0)]
    mixed = torch.where(count > 0, (1 - beta) * r.outcome + beta * agg, r.outcome)
    return replace(r, outcome=mixed, prm=scores)
