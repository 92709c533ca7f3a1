"""The warm start: supervised fine-tuning on noisy-oracle demonstrations (and, with ``sft_feedback``,
demonstrations of using a critique or a hint), so RL starts from a modest success rate and the
mistakes of the teacher."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stepcredit.feedback import Feedback
from stepcredit.generation import NoisyOracle, rollout_chains
from stepcredit.generation.scoring import padded, sequence_logprobs
from stepcredit.train.config import TrainConfig
from stepcredit.train.losses import masked_mean

__all__ = ["minibatches", "warm_start"]


def minibatches(n: int, parts: int, rng: np.random.Generator) -> Iterator[Tensor]:
    """A random permutation of ``range(n)`` cut into ``parts`` non-empty pieces."""
    order = torch.from_numpy(rng.permutation(n))
    yield from (chunk for chunk in torch.tensor_split(order, parts) if chunk.numel())


def warm_start(policy: Any, config: TrainConfig, log: Callable[[str], None] = lambda s: None,
               feedback: Sequence[Feedback] | None = None) -> dict[str, float]:
    """SFT on noisy-oracle demonstrations: cross-entropy on the generated (action) tokens only. The
    feedback methods' ``make_env(..., "warm")`` shape the demonstrations' environments (SkillRL's cold
    start: their prompts carry the initial bank's skills); ``feedback`` defaults to the config's."""
    make = config.make_env("train")
    for method in config.feedback() if feedback is None else feedback:
        make = method.make_env(make, "warm")
    demos = rollout_chains(
        make,
        NoisyOracle(config.sft_error_rate, seed=config.seed),
        range(10**9, 10**9 + config.sft_demos),  # task indices the RL steps never draw in practice
        group_size=1,
        chat_format=policy.format,
        seed=config.seed,
    )
    assert demos.response_ids is not None and demos.prompt_ids is not None
    mask = demos.rollouts.response_mask
    assert mask is not None
    prompts, responses = demos.prompt_ids, demos.response_ids
    fed = 0
    if config.sft_feedback > 0:
        prompts, responses, mask, fed = _with_feedback_demos(policy, config, prompts, responses, mask)
    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr)
    rng = np.random.default_rng([config.seed, 7])
    model.train()
    losses = []
    n = len(prompts)
    for _ in range(config.sft_epochs):
        for rows in minibatches(n, max(1, math.ceil(n / config.sft_batch)), rng):
            m = mask[rows]
            logp, _ = sequence_logprobs(model, [prompts[i] for i in rows.tolist()],
                                        responses[rows], 1.0, pad_id=policy.format.pad_id, mask=m)
            m = m.to(logp.device)
            loss = -masked_mean(logp, m)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    log(f"warm start: {n} demonstrations ({100 * demos.success_rate:.0f}% successful"
        + (f"; {fed} of them use a critique or a hint" if fed else "")
        + f"), final loss {losses[-1]:.3f}")
    return {"sft_loss": losses[-1], "sft_demo_success": demos.success_rate}


def _with_feedback_demos(policy: Any, config: TrainConfig, prompts: list[list[int]], responses: Tensor,
                         mask: Tensor) -> tuple[list[list[int]], Tensor, Tensor, int]:
    """Demonstrations of using feedback turns, on ``sft_feedback`` tasks of their own:

    * *refinements*: the noisy oracle's attempts, each group's failed one critiqued (``env_critic``) and
      redone by the oracle, the redo's prompt being the task, the attempt and the critique
      (``rollout_critique_chains(attach="critique")``) — what Critique-GRPO's refinements see;
    * *hinted answers*: the oracle's runs, a hint "The correct answer is X." (``env_judge``'s) inserted
      as a user turn right before the final answer — what OPD's hinted teacher sees (where the family
      has a reference answer).

    The warm start is shared by every run of an experiment, so the baseline starts from the same weights."""
    from stepcredit.feedback.critique import rollout_critique_chains
    from stepcredit.feedback.opd import answer_hint, hinted_context
    from stepcredit.generation import OraclePolicy

    fb = rollout_critique_chains(
        config.make_env("train"),
        NoisyOracle(config.sft_error_rate, seed=config.seed + 1),
        range(2 * 10**9, 2 * 10**9 + config.sft_feedback),  # tasks neither the RL steps nor the demos draw
        group_size=2,
        refiner=OraclePolicy(seed=config.seed),
        attach="critique",
        chat_format=policy.format,
        seed=config.seed + 1,
    )
    assert fb.prompt_ids is not None and fb.response_ids is not None and fb.off_policy is not None
    fb_mask = fb.rollouts.response_mask
    assert fb_mask is not None
    rows = torch.nonzero(fb.off_policy).squeeze(1)
    new_prompts = [fb.prompt_ids[i] for i in rows.tolist()]
    new_actions: list[list[int]] = []  # the hinted answers' tokens
    oracle = rollout_chains(config.make_env("train"), OraclePolicy(seed=config.seed),
                            range(2 * 10**9, 2 * 10**9 + config.sft_feedback), group_size=1,
                            chat_format=policy.format, seed=config.seed + 2)
    assert oracle.prompt_ids is not None and oracle.references is not None
    for i, path in enumerate(oracle.paths):
        reference = oracle.references[i]
        if reference is None:
            continue
        last = oracle.nodes[path[-1]]
        assert last.gen_ids is not None
        new_prompts.append(hinted_context(oracle.context_ids(i, len(path) - 1), answer_hint(reference), policy.format))
        new_actions.append(list(last.gen_ids))
    # the demonstrations' responses: generated tokens only (a refinement's observations stay masked out)
    fb_ids, fb_mask2 = fb.response_ids[rows], fb_mask[rows]
    pad = policy.format.pad_id
    hinted_ids, hinted_mask = padded(new_actions, pad, max(responses.shape[1], fb_ids.shape[1]))
    width = hinted_ids.shape[1]

    def widen(x: Tensor, fill: Any) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill)

    return ([*prompts, *new_prompts],
            torch.cat([widen(responses, pad), widen(fb_ids, pad), hinted_ids]),
            torch.cat([widen(mask, False), widen(fb_mask2, False), hinted_mask]),
            len(new_prompts))
