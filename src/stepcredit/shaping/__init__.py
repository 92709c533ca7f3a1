"""Shaping components: reward transforms ``(Rollouts, **params) -> Rollouts`` (same trajectories)."""

from stepcredit.shaping.calibration import brier, parse_confidence
from stepcredit.shaping.expert import expert_similarity
from stepcredit.shaping.prm import HFProcessRewardScorer, prm_mix

__all__ = ["HFProcessRewardScorer", "brier", "expert_similarity", "parse_confidence", "prm_mix"]
