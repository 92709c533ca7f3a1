"""Credit estimators: pure functions ``(Rollouts, **params) -> Credit``, one module per family."""

from stepcredit.estimators.outcome import grpo, ms_grpo, reinforce_pp_baseline, rloo

__all__ = ["grpo", "ms_grpo", "reinforce_pp_baseline", "rloo"]
