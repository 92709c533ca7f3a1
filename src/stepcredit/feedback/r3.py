"""DRO's R3 in the RL loop: the policy's log-probabilities of the reference answer after each rollout's
own reasoning become the reward (``shaping.r3`` holds the formulas as pure tensor functions).

Xu et al. 2025, arXiv:2506.13351 (method page: ``docs/methods/dro_r3.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from stepcredit.core.registry import Interval, NonNegative
from stepcredit.envs.actions import parse_action
from stepcredit.feedback.base import Feedback, Step
from stepcredit.generation.engine import TrainingBatch
from stepcredit.generation.scoring import score_tokens
from stepcredit.shaping.r3 import Weighting, r3_filter, r3_reward

__all__ = ["R3", "R3Options", "r3_rollouts"]


@dataclass(frozen=True)
class R3Options:
    """DRO's options (``TrainConfig.r3``): the reward ``outcome_weight · R + r3_weight · R3`` with R3's
    token ``weighting``, and the variance filter on groups (``min_spread`` of the groups' R3 spread, or
    the ``keep_quantile`` of groups with the largest spread; both None: no filter)."""

    weighting: Weighting = "linear"
    r3_weight: float = 1.0
    outcome_weight: float = 0.0
    min_spread: NonNegative | None = None
    keep_quantile: Annotated[float, Interval(0, 1, low_open=True)] | None = None


def r3_rollouts(policy: Any, batch: TrainingBatch, options: R3Options, temperature: float,
                chunk: int = 64) -> tuple[Any, Tensor | None, dict[str, float]]:
    """DRO's R3 reward in the loop: the policy's log-probs of the reference answer's tokens with each
    rollout's own reasoning before it (the rollout's final answer replaced by the reference, v1 §4.2.1),
    then ``shaping.r3`` — the reward ``outcome_weight·R + r3_weight·R3`` as the rollouts' outcome, and the
    variance filter. Returns the rollouts (filtered), the indices kept (None: no filter) and statistics."""
    r = batch.rollouts
    fmt = policy.format
    if batch.references is None or any(ref is None for ref in batch.references):
        raise ValueError("r3 needs the verifier's reference answer: this environment family has none "
                         "(ToolEnv.reference_answer returned None)")
    assert batch.prompt_ids is not None
    contexts, answers = [], []
    for i, path in enumerate(batch.paths):
        last = batch.nodes[path[-1]]
        if parse_action(last.step.action).answer is not None:  # the reasoning is everything before the answer
            before = batch.context_ids(i, len(path) - 1)
        else:  # no answer given (turn budget): all of it, then the answer's turn
            assert last.context.token_ids is not None
            before = [*last.context.token_ids, *fmt.encode_observation(last.step.observation)]
        contexts.append(before)
        answers.append(fmt.encode_action(f"answer {batch.references[i]}"))
    logp, ref_mask = score_tokens(policy, contexts, answers, temperature, chunk)
    ref_logprobs = logp.double().clamp(max=0.0)
    r3 = r3_reward(ref_logprobs, ref_mask, r.group, weighting=options.weighting).to(r.outcome.dtype)
    reward = options.outcome_weight * r.outcome + options.r3_weight * r3
    shaped = r.replace(outcome=reward)
    success = r.outcome >= 1.0
    stats = {"r3_mean": float(r3.mean()),
             "r3_success_gap": float(r3[success].mean() - r3[~success].mean()) if bool(success.any() & (~success).any())
             else math.nan}
    if options.min_spread is None and options.keep_quantile is None:
        return shaped, None, stats
    keep = r3_filter(ref_logprobs, ref_mask, r.group, min_spread=options.min_spread,
                     keep_quantile=options.keep_quantile)
    kept = torch.nonzero(keep).squeeze(1)
    stats["r3_kept"] = float(keep.float().mean())
    return shaped.select(kept), kept, stats


class R3(Feedback):
    """DRO's R3 as the rollouts' reward (and its variance filter) before the recipe runs."""

    name = "r3"

    def __init__(self, options: R3Options) -> None:
        self.options = options

    def after_rollout(self, step: Step) -> None:
        if step.kept is not None or step.rollouts.num_trajectories != step.batch.rollouts.num_trajectories:
            raise RuntimeError("r3 scores the whole generated batch: no earlier hook may filter it")
        step.rollouts, kept, stats = r3_rollouts(step.policy, step.batch, self.options, step.temperature)
        step.kept = kept
        step.stats |= stats
