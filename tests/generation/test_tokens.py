"""The engine with a tiny Hugging Face policy: token spans, old log-probs, and the token budget of trees."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from stepcredit.envs import env_factory
from stepcredit.generation import ChatFormat, Context, Generation, TrainingBatch, rollout_chains, rollout_trees
from stepcredit.generation.hf import HFPolicy
from stepcredit.generation.tiny import tiny_policy

CALC = env_factory("calculator", depth=2, max_steps=4)


@pytest.fixture(scope="module")
def policy() -> HFPolicy:
    return tiny_policy(("calculator",), max_new_tokens=12, temperature=1.0, seed=0)  # type: ignore[no-any-return]


def check_tokens(batch: TrainingBatch, fmt: ChatFormat) -> None:
    r = batch.rollouts
    assert r.response_mask is not None and batch.response_ids is not None and batch.old_logprobs is not None
    assert r.step_token_start is not None and r.step_token_end is not None
    covered = torch.zeros_like(r.response_mask)
    for i, path in enumerate(batch.paths):
        lo, hi = int(r.step_offsets[i]), int(r.step_offsets[i + 1])
        for s, node_id in zip(range(lo, hi), path, strict=True):
            a, b = int(r.step_token_start[s]), int(r.step_token_end[s])
            node = batch.nodes[node_id]
            assert batch.response_ids[i, a:b].tolist() == node.gen_ids  # the ids as generated
            covered[i, a:b] = True
            if node.obs_ids:  # the observation follows the action, outside the mask
                assert batch.response_ids[i, b : b + len(node.obs_ids)].tolist() == node.obs_ids
    assert torch.equal(covered, r.response_mask)  # the mask is exactly the generated tokens
    assert bool((batch.old_logprobs[~r.response_mask] == 0).all())


def test_chain_tokens_spans_and_old_logprobs(policy: HFPolicy) -> None:
    batch = rollout_chains(CALC, policy, range(3), group_size=3, chat_format=policy.format, seed=0)
    check_tokens(batch, policy.format)
    assert batch.generated_tokens == sum(len(n.gen_ids or []) for n in batch.nodes.values())
    assert batch.prompt_ids is not None and batch.old_logprobs is not None and batch.response_ids is not None
    r = batch.rollouts
    assert r.response_mask is not None
    # old log-probs equal a teacher-forced pass over prompt + response (the ratio of a first PPO step is 1)
    for i in range(r.num_trajectories):
        prompt = batch.prompt_ids[i]
        length = int(r.response_mask[i].nonzero().max()) + 1
        ids = torch.tensor([prompt + batch.response_ids[i, :length].tolist()])
        with torch.no_grad():
            logits = policy.model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1] / policy.temperature, dim=-1)
        got = logp.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
        mask = r.response_mask[i, :length]
        torch.testing.assert_close(got[mask], batch.old_logprobs[i, :length][mask], atol=2e-4, rtol=0)


def test_trees_generate_shared_prefixes_once(policy: HFPolicy) -> None:
    trees = rollout_trees(CALC, policy, range(3), trees=2, expand=3, iterations=1, chat_format=policy.format, seed=0)
    chains = rollout_chains(CALC, policy, range(3), group_size=8, chat_format=policy.format, seed=0)
    assert trees.rollouts.num_trajectories == chains.rollouts.num_trajectories == 24
    check_tokens(trees, policy.format)
    assert trees.generated_tokens == sum(len(n.gen_ids or []) for n in trees.nodes.values())
    # the kept trajectories hold more tokens than were generated: prefixes are repeated, not regenerated
    r = trees.rollouts
    assert r.response_mask is not None
    assert int(r.response_mask.sum()) > trees.generated_tokens
    assert trees.tokens_per_trajectory < chains.tokens_per_trajectory


def test_call_token_spans_cover_each_call_of_a_compact_action(policy: HFPolicy) -> None:
    class TwoCalls:
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            return [Generation("add(a=1, b=2); mul(a=3, b=40)" if c.step == 0 else "answer 3") for c in contexts]

    fmt = policy.format
    batch = rollout_chains(CALC, TwoCalls(), range(1), group_size=1, chat_format=fmt)
    r = batch.rollouts
    assert r.call_token_start is not None and r.call_token_end is not None and batch.response_ids is not None
    texts = [
        fmt.tokenizer.decode(batch.response_ids[0, int(a) : int(b)].tolist()).strip()
        for a, b in zip(r.call_token_start, r.call_token_end, strict=True)
    ]
    assert texts == ["add(a=1, b=2);", "mul(a=3, b=40)"] or texts == ["add(a=1, b=2)", "mul(a=3, b=40)"]
    assert r.texts.call_name.to_pylist() == ["add", "mul"]


def test_a_single_call_span_is_the_action_without_the_end_token(policy: HFPolicy) -> None:
    class OneCall:
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            return [Generation("add(a=1, b=2)" if c.step == 0 else "answer 3") for c in contexts]

    batch = rollout_chains(CALC, OneCall(), range(1), group_size=1, chat_format=policy.format)
    r = batch.rollouts
    assert r.call_token_start is not None and r.call_token_end is not None and r.step_token_start is not None
    assert batch.response_ids is not None
    a, b = int(r.call_token_start[0]), int(r.call_token_end[0])
    assert a == int(r.step_token_start[0])
    assert batch.response_ids[0, b].item() == policy.format.end_id  # the span stops just before it
    assert policy.format.tokenizer.decode(batch.response_ids[0, a:b].tolist()).strip() == "add(a=1, b=2)"
