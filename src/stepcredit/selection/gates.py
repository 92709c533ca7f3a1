"""Gates over groups: rubric feasibility (DRO), mixed binary outcomes, zero variance (DAPO), accuracy
window (PRIME). Each returns the indices of the trajectories it keeps, in batch order."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.registry import NonNegative, Probability, UserCode, register
from stepcredit.selection import rubrics as rubric_checks


def _keep_groups(rollouts: Rollouts, keep_group: Tensor) -> Tensor:
    return torch.nonzero(keep_group[rollouts.group]).squeeze(1)


@register("selection")
def rubric_gate(
    rollouts: Rollouts,
    *,
    rubrics: Annotated[list[str], UserCode] | None = None,
    mode: Literal["drop", "infeasible"] = "drop",
    infeasible_value: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """DRO's rubric gate: hard rubrics decide feasibility; dense credit then acts among valid rollouts.

    A rollout is valid when it passes every rubric (``rubrics``: names of checks in
    ``stepcredit.rubrics`` or ``module:function``; none: the ``rubric`` column). Groups without a
    valid rollout are removed. ``mode="drop"`` removes the invalid rollouts too, so group statistics
    use valid ones only; ``"infeasible"`` keeps them with the outcome ``infeasible_value``. Xu et al.
    2025 (DRO, v3), arXiv:2506.13351 — the paper does not pin down the exact gate semantics; both of
    its readings are offered.
    """
    r = rollouts
    valid = rubric_checks.verdicts(r, rubrics).all(dim=1)
    any_valid = segments.segment_sum(valid.long(), r.group, r.num_groups) > 0
    if mode == "drop":
        return torch.nonzero(valid & any_valid[r.group]).squeeze(1)
    keep = _keep_groups(r, any_valid)
    outcome = torch.where(valid[keep], r.outcome[keep], torch.full_like(r.outcome[keep], infeasible_value))
    return keep, outcome


@register("selection")
def binary_gate(rollouts: Rollouts, *, success_threshold: float = 1.0) -> Tensor:
    """Keep groups whose *binary* outcome (``outcome ≥ success_threshold``) is mixed — the filter that
    still finds the informative groups when shaped rewards make every group's std non-zero
    (verl-recipe PR #125)."""
    r = rollouts
    wins, size = segments.group_wins(r.outcome >= success_threshold, r.group, r.num_groups)
    return _keep_groups(r, (wins > 0) & (wins < size))


@register("selection")
def zero_variance_filter(rollouts: Rollouts, *, tolerance: NonNegative = 1e-6) -> Tensor:
    """DAPO's dynamic sampling: drop groups whose outcomes are all equal — within ``tolerance``
    (max − min ≤ tolerance), so float noise of shaped rewards counts as equal (NeMo RL PR #4158).
    A group of one trajectory has no variance and is dropped. Yu et al. 2025 (DAPO), arXiv:2503.14476."""
    r = rollouts
    lo, hi = segments.segment_min_max(r.outcome, r.group, r.num_groups)
    return _keep_groups(r, (hi - lo) > tolerance)


@register("selection")
def accuracy_window(
    rollouts: Rollouts, *, low: Probability = 0.2, high: Probability = 0.8, success_threshold: float = 1.0
) -> Tensor:
    """PRIME's accuracy filter: keep groups whose success rate lies in [low, high] (defaults as
    released). Cui et al. 2025, arXiv:2502.01456."""
    if low > high:
        raise ValueError(f"accuracy_window needs low <= high, got low={low}, high={high}")
    r = rollouts
    rate = segments.segment_mean((r.outcome >= success_threshold).double(), r.group, r.num_groups)
    return _keep_groups(r, (rate >= low) & (rate <= high))
