"""Samplers that pick the update batch from credited trajectories."""

from __future__ import annotations

import torch
from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import Count, Probability, Seed, register


@register("selection", needs_credit=True)
def abs_adv_sampling(
    rollouts: Rollouts,
    credit: Credit,
    *,
    num_samples: Count | None = None,
    fraction: Probability | None = None,
    seed: Seed = 0,
) -> Tensor:
    """MS-GRPO's absolute-advantage-weighted episode sampling: P(pick i) ∝ |A_i|.

    Draws ``num_samples`` episodes (or ``fraction`` of the batch) without replacement, each with
    probability proportional to its mean absolute step credit |A_i| (an episode without steps uses its
    trajectory credit), so zero-advantage episodes are never picked and informative ones dominate.
    Returns the picked indices in batch order; fewer than asked when fewer episodes have |A_i| > 0.
    Seeded: the same seed gives the same pick. Dilkes et al. 2025, arXiv:2508.10839 (the paper does
    not pin down replacement; we sample without, so no episode is duplicated in the update batch).
    """
    n = rollouts.num_trajectories
    if (num_samples is None) == (fraction is None):
        raise ValueError("give exactly one of num_samples and fraction")
    k = num_samples if num_samples is not None else round(float(fraction or 0.0) * n)
    step_abs = segments.segment_mean(credit.per_step(rollouts).abs(), rollouts.step_traj, n)
    weight = torch.where(rollouts.steps_per_trajectory > 0, step_abs, credit.trajectory.abs()).double()
    k = min(k, int((weight > 0).sum()))
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=rollouts.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    picked = torch.multinomial(weight.cpu(), k, replacement=False, generator=gen)
    return torch.sort(picked).values.to(rollouts.device)
