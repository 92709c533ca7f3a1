"""Training: the config (``config``), the warm start (``warmstart``), the RL loop (``loop``), the loss
terms (``losses``) and the experiment runner (``experiment``)."""

from stepcredit.train.config import TrainConfig
from stepcredit.train.loop import build_policy, evaluate, rl_step, train, update
from stepcredit.train.warmstart import warm_start

__all__ = ["TrainConfig", "build_policy", "evaluate", "rl_step", "train", "update", "warm_start"]
