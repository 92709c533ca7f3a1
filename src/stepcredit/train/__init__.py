"""Training: losses (``losses``), the trainer (``trainer``) and the experiment runner (``experiment``)."""

from stepcredit.train.losses import agg_loss, entropy_from_logits, kl_penalty, ppo_clip_loss
from stepcredit.train.trainer import TrainConfig, sequence_logprobs, train, warm_start

__all__ = [
    "TrainConfig",
    "agg_loss",
    "entropy_from_logits",
    "kl_penalty",
    "ppo_clip_loss",
    "sequence_logprobs",
    "train",
    "warm_start",
]
