"""RLCR's calibration reward: correctness minus the Brier penalty of the stated confidence."""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from torch import Tensor

from stepcredit.core import Rollouts
from stepcredit.core.registry import register
from stepcredit.views import trajectory_actions

__all__ = ["brier", "parse_confidence", "rlcr_reward", "stated_confidence"]

CONFIDENCE_TAG = re.compile(r"<confidence>(.*?)</confidence>", re.DOTALL)


def parse_confidence(text: str) -> float:
    """The number in the *last* ``<confidence>…</confidence>`` tag of ``text``; NaN when there is no
    tag or it does not hold a plain number (RLCR's format check). Range is checked by the caller."""
    tags = CONFIDENCE_TAG.findall(text)
    if not tags:
        return math.nan
    try:
        value = float(tags[-1].strip())
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def stated_confidence(rollouts: Rollouts, source: Literal["tag", "column"] = "tag") -> Tensor:
    """``[N]`` stated confidences: parsed from the trajectory's assistant texts (last tag) or the
    ``confidence`` column; NaN where none was stated or it was unparsable."""
    if source == "column":
        if rollouts.confidence is None:
            raise ValueError("source='column' needs a confidence column in the rollouts")
        return rollouts.confidence.clone()
    values = [parse_confidence(text) for text in trajectory_actions(rollouts)]
    return torch.tensor(values, dtype=torch.float32, device=rollouts.device)


def rlcr_reward(
    rollouts: Rollouts,
    *,
    variant: Literal["paper", "released"] = "paper",
    source: Literal["tag", "column"] = "tag",
    success_threshold: float = 1.0,
) -> Tensor:
    """``[N]`` RLCR reward of each trajectory (see ``brier``)."""
    r = rollouts
    q = stated_confidence(r, source).to(r.outcome.dtype)
    c = (r.outcome >= success_threshold).to(r.outcome.dtype)
    fmt = torch.isfinite(q) & (q >= 0) & (q <= 1)
    q0 = torch.where(fmt, q, torch.zeros_like(q))
    if variant == "paper":
        return torch.where(fmt, c - (q0 - c) ** 2, c - 1)
    f = fmt.to(q.dtype)
    acc = c * f
    return 0.5 * (f + acc + f * (1 - (acc - q0) ** 2))


@register("shaping")
def brier(
    rollouts: Rollouts,
    *,
    variant: Literal["paper", "released"] = "paper",
    source: Literal["tag", "column"] = "tag",
    success_threshold: float = 1.0,
) -> Rollouts:
    """RLCR: reward correctness and calibration together with a bounded proper scoring rule.

        c = 1[outcome ≥ success_threshold],  q = stated confidence
        paper:     R = c − (q − c)²
        released:  R = 0.5 · (fmt + acc + 1 − (acc − q)²),  fmt = 1[q parsable and in [0, 1]],
                   acc = c · fmt, and the Brier term is 0 when fmt = 0

    As shaping, the new reward replaces the outcome (later selections see it: gate on correctness
    before, or use the ``brier`` *credit* component (``stepcredit.estimators.brier``), which adds the
    calibration advantage to the sum and leaves the outcome alone). q is the number in the *last*
    ``<confidence>`` tag of the
    trajectory's assistant texts (``source="tag"``) or the ``confidence`` column. An unparsable or
    out-of-range q fails the format: the released variant then gives 0.5 · (0 + 0 + 0) = 0; the paper
    states no rule, and we give c − 1, the worst a stated confidence could score, so that stating none
    never pays. Damani et al. 2025, arXiv:2507.16806 (code: damanimehul/RLCR ``reward_fns.py``).
    Pair it with a mean-only advantage (``grpo: {norm: mean}``) to keep the proper-scoring guarantee.
    """
    reward = rlcr_reward(rollouts, variant=variant, source=source, success_threshold=success_threshold)
    return rollouts.replace(outcome=reward)
