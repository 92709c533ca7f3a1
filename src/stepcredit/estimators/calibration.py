"""Calibration credit: RLCR's Brier reward as a group-relative advantage."""

from __future__ import annotations

from typing import Literal

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import register
from stepcredit.core.segments import Norm
from stepcredit.shaping.calibration import rlcr_reward

__all__ = ["brier"]


@register("credit")
def brier(
    rollouts: Rollouts,
    *,
    variant: Literal["paper", "released"] = "paper",
    source: Literal["tag", "column"] = "tag",
    success_threshold: float = 1.0,
    norm: Norm = "mean",
    eps: float = 1e-6,
) -> Credit:
    """RLCR as a credit component: the group-relative advantage of the RLCR reward (see the ``brier``
    shaping), mean-only by default as RLCR trains (``scale_rewards=false``).

        A_i = norm_g(c_i − (q_i − c_i)²)

    In a weighted sum with ``grpo`` it adds a calibration signal without touching the outcome that
    gates and samplers read. Damani et al. 2025, arXiv:2507.16806.
    """
    r = rollouts
    reward = rlcr_reward(r, variant=variant, source=source, success_threshold=success_threshold)
    return Credit(segments.group_normalize(reward, r.group, r.num_groups, norm=norm, eps=eps))
