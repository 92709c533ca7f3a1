"""Step-level GRPO over step rewards, and PRM-mixed step credit."""

from __future__ import annotations

from typing import Literal

import torch

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import Probability, register
from stepcredit.core.segments import Norm


def step_positions(rollouts: Rollouts) -> torch.Tensor:
    """``[S]`` index of every step within its trajectory (0 for the first)."""
    r = rollouts
    return torch.arange(r.num_steps, device=r.device) - r.step_offsets[:-1][r.step_traj]


@register("credit")
def step_grpo(
    rollouts: Rollouts,
    *,
    key: Literal["position", "state"] = "position",
    norm: Norm = "std",
    eps: float = 1e-6,
) -> Credit:
    """GRPO on step rewards: each step's reward normalised among the group's steps that answer the same
    instance — the k-th steps of the group (``key="position"``, SRL's instances: expert prefix k) or the
    steps from the same decision point (``"state"``).

        A(step) = (r_step − mean_{(g, key)} r) / (std_{(g, key)} r + ε)

    A step group of one gets 0. Use with ``expert_similarity`` (SRL, Deng et al. 2025,
    arXiv:2510.25992) or any shaping that writes step rewards.
    """
    r = rollouts
    if key == "position":
        ids, k = segments.unique_pairs(r.step_group, step_positions(r), a_size=r.num_groups)
    elif key == "state":
        ids, k = r.decision_points
    else:
        raise AssertionError(key)  # the registry checks the Literal
    step = segments.group_normalize(r.reward, ids, k, norm=norm, eps=eps, singleton="zero")
    return Credit(torch.zeros_like(r.outcome), step=step)


@register("credit")
def prm_step(
    rollouts: Rollouts,
    *,
    beta: Probability = 0.75,
    norm: Norm = "mean",
    eps: float = 1e-6,
    protect_abandoned: bool = True,
) -> Credit:
    """Step credit that mixes the outcome advantage with the step's own process-reward score.

        A(step) = (1 − β) · norm_g(R) + β · (prm_step − mean_{steps of g} prm)

    The PRM term compares a step's score with the other steps of its task. With
    ``protect_abandoned`` a step flagged ``abandoned`` (an abandoned branch or a backtrack) keeps a
    non-negative PRM term: exploring that was given up is not penalised. The step-level counterpart of
    ``prm_mix`` (ReasonFlux-PRM, Zou et al. 2025, arXiv:2506.18896; β = 0.75 as released).
    """
    r = rollouts
    if r.prm is None:
        raise ValueError("prm_step needs PRM scores (the prm column, or run prm_mix with a scorer first)")
    outcome = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    centered = r.prm - segments.segment_mean(r.prm, r.step_group, r.num_groups)[r.step_group]
    if protect_abandoned and r.abandoned is not None:
        centered = torch.where(r.abandoned, centered.clamp_min(0), centered)
    return Credit((1 - beta) * outcome, step=beta * centered)
