"""ReasonFlux-PRM's reward mixing: outcome and aggregated process-reward scores, and the scorer that
reads those scores from a Hugging Face PRM.

``HFProcessRewardScorer``: ReasonFlux-PRM and the Qwen-Math PRMs read a step's score at a separator
token placed after it (``<extra_0>``): the model's logits there, softmaxed over its classes, give
P(step is good). The adapter renders each trajectory as ``prompt`` then every step's action followed
by the separator, runs the model once per batch of trajectories, and returns one score per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.registry import Probability, UserCode, import_callable, register
from stepcredit.views import step_action_texts

__all__ = ["HFProcessRewardScorer", "Scorer", "prm_mix", "prm_scores"]

Scorer = Callable[[Rollouts], Tensor]


def prm_scores(rollouts: Rollouts, scorer: str | Scorer | None = None) -> Tensor:
    """``[S]`` PRM scores: from ``scorer(rollouts)`` when given, else the ``prm`` column."""
    if scorer is None:
        if rollouts.prm is None:
            raise ValueError("no PRM scores: give a scorer or load rollouts with a prm column")
        return rollouts.prm
    scores: Tensor = import_callable(scorer, "scorer")(rollouts)
    if scores.shape != (rollouts.num_steps,) or not bool(torch.isfinite(scores).all()):
        raise ValueError(f"the scorer must return {rollouts.num_steps} finite scores, got shape {tuple(scores.shape)}")
    return scores.to(torch.float32)


@register("shaping")
def prm_mix(
    rollouts: Rollouts,
    *,
    beta: Probability = 0.75,
    aggregate: Literal["mean", "min", "last"] = "mean",
    scorer: Annotated[str | Scorer, UserCode] | None = None,
    skip_abandoned: bool = True,
) -> Rollouts:
    """ReasonFlux-PRM as an RL reward: mix the outcome with the trajectory's aggregated PRM score.

        R' = (1 − β) · R + β · aggregate_t(prm_t)          (β = 0.75, the released ``BETA``)

    ``aggregate``: mean, min or last step score. Scores come from ``scorer`` (a callable
    ``Rollouts -> [S]``, e.g. ``HFProcessRewardScorer``, or ``module:function``) or the
    ``prm`` column; with a scorer they are also stored in the ``prm`` column. With ``skip_abandoned``
    steps flagged ``abandoned`` are left out of the aggregate, so a given-up branch does not drag the
    reward down (a trajectory whose steps are all abandoned keeps its outcome). A trajectory without
    steps keeps its outcome. Zou et al. 2025, arXiv:2506.18896.
    """
    r = rollouts
    scores = prm_scores(r, scorer)
    n = r.num_trajectories
    use = torch.ones(r.num_steps, dtype=torch.bool, device=r.device)
    if skip_abandoned and r.abandoned is not None:
        use = ~r.abandoned
    idx, vals = r.step_traj[use], scores[use]
    count = segments.segment_count(idx, n)
    if aggregate == "mean":
        agg = segments.segment_mean(vals, idx, n)
    elif aggregate == "min":
        agg, _ = segments.segment_min_max(vals, idx, n)
    else:
        last = segments.segment_last(idx, n, positions=torch.nonzero(use).squeeze(1))
        agg = scores[last.clamp_min(0)]
    mixed = torch.where(count > 0, (1 - beta) * r.outcome + beta * agg, r.outcome)
    return r.replace(outcome=mixed, prm=scores)


class HFProcessRewardScorer:
    """A ``Rollouts -> [S]`` scorer (``prm_mix(scorer=...)``) around a HF model and tokenizer.

    Args:
        model: any HF model whose output ``logits`` are ``(batch, length, classes)`` (e.g. a
            ``*ForTokenClassification`` PRM head, or a causal LM with ``positive_index`` naming the
            token whose probability is the score).
        tokenizer: its tokenizer; the separator must encode to exactly one token.
        separator: the step separator text (ReasonFlux / Qwen-Math PRM: ``<extra_0>``).
        positive_index: the class (or vocabulary id) whose softmax probability is the score.
        batch_size: trajectories per forward pass.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        separator: str = "<extra_0>",
        positive_index: int = 1,
        batch_size: int = 8,
        max_length: int | None = None,
    ) -> None:
        ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"separator {separator!r} must be one token of the tokenizer, got {len(ids)} tokens")
        self.model, self.tokenizer = model, tokenizer
        self.separator, self.separator_id = separator, ids[0]
        self.positive_index, self.batch_size, self.max_length = positive_index, batch_size, max_length

    def render(self, rollouts: Rollouts) -> list[str]:
        """One text per trajectory: the prompt, then each step's action followed by the separator."""
        assert rollouts.texts is not None
        prompts = rollouts.texts.prompt.to_pylist()
        actions = step_action_texts(rollouts)
        off = rollouts.step_offsets.tolist()
        return [
            prompts[i] + "\n" + "".join(f"{actions[s]}{self.separator}" for s in range(off[i], off[i + 1]))
            for i in range(rollouts.num_trajectories)
        ]

    @torch.no_grad()
    def __call__(self, rollouts: Rollouts) -> Tensor:
        texts = self.render(rollouts)
        counts = rollouts.steps_per_trajectory.tolist()
        scores: list[Tensor] = []
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                )
                logits = self.model(**batch).logits
                probs = torch.softmax(logits.float(), dim=-1)[..., self.positive_index]
                at_sep = (batch["input_ids"] == self.separator_id) & batch["attention_mask"].bool()
                found = at_sep.sum(1)
                want = torch.tensor(counts[start : start + at_sep.shape[0]])
                if not torch.equal(found, want):
                    row = int(torch.nonzero(found != want)[0, 0])
                    raise ValueError(
                        f"trajectory {rollouts.trajectory_id(start + row)!r}: found {int(found[row])} separators for "
                        f"{int(want[row])} steps (truncated by max_length, or the separator occurs in the text)"
                    )
                scores.append(probs[at_sep])  # row-major: each trajectory's steps in order
        finally:
            self.model.train(was_training)
        if not scores:
            return torch.zeros(0)
        return torch.cat(scores).to(rollouts.device)
