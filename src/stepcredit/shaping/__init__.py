"""Shaping components: reward transforms ``(Rollouts, **params) -> Rollouts`` (same trajectories), and
DRO's R3 reward from reference log-probs a trainer computes (``r3``)."""

from stepcredit.shaping.calibration import brier, parse_confidence
from stepcredit.shaping.expert import expert_similarity
from stepcredit.shaping.prm import HFProcessRewardScorer, prm_mix
from stepcredit.shaping.r3 import r3_filter, r3_reward, r3_weights, reflectivity

__all__ = [
    "HFProcessRewardScorer", "brier", "expert_similarity", "parse_confidence", "prm_mix", "r3_filter", "r3_reward",
    "r3_weights", "reflectivity",
]
