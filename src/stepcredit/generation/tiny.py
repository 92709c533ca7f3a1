"""A tiny language-model policy built on this machine: a tokenizer trained on the environments' own
text and a randomly initialised Qwen2/Llama-style model. Nothing is downloaded.

It is the default model of the tests and of the laptop-sized experiments; any Hugging Face causal LM
folder can replace it (``HFPolicy.from_pretrained``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from stepcredit.envs import FAMILIES, env_factory
from stepcredit.generation.engine import rollout_chains
from stepcredit.generation.scripted import NoisyOracle

__all__ = ["env_corpus", "tiny_policy"]


def env_corpus(families: Sequence[str] = tuple(FAMILIES), *, tasks: int = 64, seed: int = 0) -> list[str]:
    """Texts of noisy-oracle runs on the *train* split of each family: prompts, actions (right and
    wrong), observations, and the chat-format tool schemas."""
    return list(_corpus(tuple(families), tasks, seed))


@functools.lru_cache(maxsize=8)
def _corpus(families: tuple[str, ...], tasks: int, seed: int) -> tuple[str, ...]:
    texts: list[str] = []
    for family in families:
        for chat in (False, True):
            make = env_factory(family, chat=chat)
            batch = rollout_chains(make, NoisyOracle(0.3, seed=seed), range(tasks if not chat else 4), group_size=2)
            r = batch.rollouts
            texts += r.texts.prompt.to_pylist() + r.texts.action.to_pylist() + r.texts.observation.to_pylist()
    return tuple(texts)


def tiny_policy(
    families: Sequence[str] = tuple(FAMILIES),
    *,
    arch: Literal["qwen2", "llama"] = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    **policy_kw: Any,
) -> Any:
    """An ``HFPolicy`` over a tokenizer trained on ``env_corpus(families)`` and a fresh tiny model."""
    from stepcredit.generation.hf import HFPolicy, tiny_model, train_tokenizer

    tokenizer = train_tokenizer(env_corpus(families, seed=seed), vocab_size=vocab_size)
    model = tiny_model(tokenizer, arch=arch, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    return HFPolicy(model, tokenizer, seed=seed, **policy_kw)
