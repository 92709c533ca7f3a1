"""The oracle yardstick: credit read from ground-truth step labels.

This is the one component that reads labels, and it exists only to *bound* what credit assignment can
achieve: in an experiment its learning curve is the upper reference that makes every label-free curve
interpretable (how much of the outcome-GRPO → oracle gap a method closes). Never use it to train a
model you mean to deploy: real rollouts carry no labels.
"""

from __future__ import annotations

import torch

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import Positive, register
from stepcredit.core.segments import Norm


@register("credit")
def oracle(rollouts: Rollouts, *, weight: Positive = 1.0, norm: Norm = "std", eps: float = 1e-6) -> Credit:
    """Oracle step credit from the environment's labels (the yardstick of the experiment; reads labels):

        A(step) = weight · label(step)        if label(step) ∈ {+1, −1}
        A(step) = A_GRPO(trajectory)          if label(step) = 0 (neutral: reads, errors, malformed text)

    with ``A_GRPO = (R − mean_g R) / (std_g R + ε)``. Correct steps are raised and wrong steps lowered
    whatever the outcome; neutral steps keep the outcome signal (so e.g. malformed actions in failed
    runs are still pushed down). Needs the ``label`` column.
    """
    r = rollouts
    if r.label is None:
        raise ValueError("the oracle recipe needs step labels (the label column): it is an upper bound, not a method")
    outcome = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    label = r.label.to(torch.float32)
    step = torch.where(label != 0, weight * label - outcome[r.step_traj], torch.zeros_like(label))
    return Credit(outcome, step=step)
