"""stepcredit: dense per-step and per-token credit for RL of tool-using LLM agents."""

from stepcredit.errors import RolloutError
from stepcredit.rollouts import Rollouts, StepKind, Texts

__all__ = ["RolloutError", "Rollouts", "StepKind", "Texts"]
__version__ = "0.1.0"
