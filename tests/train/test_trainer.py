"""The trainer: one RL step follows the credit, runs are deterministic, and resume continues exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from stepcredit.generation import rollout_chains
from stepcredit.generation.scoring import sequence_logprobs
from stepcredit.train import TrainConfig, build_policy, train, update
from tests.support.train import TINY


def without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in history]


def test_one_rl_step_raises_positively_credited_tokens_and_lowers_negative_ones() -> None:
    config = TrainConfig(**TINY, lr=3e-3, clip_high=10.0, clip_low=0.99)  # type: ignore[arg-type]
    policy = build_policy(config)
    batch = rollout_chains(config.make_env("train"), policy, range(4), group_size=2, chat_format=policy.format)
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.old_logprobs is not None
    mask = batch.rollouts.response_mask
    assert mask is not None
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(mask.shape[0])])
    advantages = torch.where(mask, sign[:, None], 0.0)
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.5)

    def mean_logp() -> tuple[float, float]:
        with torch.no_grad():
            logp, _ = sequence_logprobs(policy.model, batch.prompt_ids, batch.response_ids, 1.0,
                                        pad_id=policy.format.pad_id)
        pos, neg = mask & (advantages > 0), mask & (advantages < 0)
        return float(logp[pos].mean()), float(logp[neg].mean())

    before = mean_logp()
    update(policy, optimizer, config, batch.prompt_ids, batch.response_ids, batch.old_logprobs, advantages, mask)
    after = mean_logp()
    assert after[0] > before[0] + 1e-3  # credited +1: more likely
    assert after[1] < before[1] - 1e-3  # credited −1: less likely


def test_zero_advantages_leave_the_model_unchanged() -> None:
    config = TrainConfig(**TINY)  # type: ignore[arg-type]
    policy = build_policy(config)
    batch = rollout_chains(config.make_env("train"), policy, range(2), group_size=2, chat_format=policy.format)
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.old_logprobs is not None
    mask = batch.rollouts.response_mask
    assert mask is not None
    weights = [p.detach().clone() for p in policy.model.parameters()]
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    update(policy, optimizer, config, batch.prompt_ids, batch.response_ids, batch.old_logprobs,
           torch.zeros(mask.shape), mask)
    assert all(torch.equal(a, b) for a, b in zip(weights, policy.model.parameters(), strict=True))


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    config = TrainConfig(**TINY, steps=2, recipe="gigpo")  # type: ignore[arg-type]
    a = train(config, tmp_path / "a", progress=False)
    b = train(config, tmp_path / "b", progress=False)
    assert without_times(a) == without_times(b)
    assert [row["step"] for row in a] == [0, 1, 2] and all("eval_success" in row for row in a)
    other = TrainConfig(**TINY, steps=2, recipe="gigpo", seed=1)  # type: ignore[arg-type]
    c = train(other, tmp_path / "c", progress=False)
    assert without_times(a) != without_times(c)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full = train(TrainConfig(**TINY, steps=3, checkpoint_every=1), tmp_path / "full", progress=False)  # type: ignore[arg-type]
    train(TrainConfig(**TINY, steps=2, checkpoint_every=1), tmp_path / "cut", progress=False)  # type: ignore[arg-type]
    config = TrainConfig(**TINY, steps=3, checkpoint_every=1)  # type: ignore[arg-type]
    resumed = train(config, tmp_path / "cut", resume=True, progress=False)
    assert without_times(resumed) == without_times(full)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    config = TrainConfig(**TINY, steps=1)  # type: ignore[arg-type]
    train(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"config differs .*\['lr'\]"):
        train(TrainConfig(**TINY, steps=2, lr=5e-3), tmp_path, resume=True, progress=False)  # type: ignore[arg-type]
    assert len(train(TrainConfig(**TINY, steps=2), tmp_path, resume=True, progress=False)) == 3  # type: ignore[arg-type]


def test_trees_and_selection_recipes_train(tmp_path: Path) -> None:
    trees = TrainConfig(**TINY, steps=1, rollout="trees", tree=(1, 1, 1), recipe="tree_grpo")  # type: ignore[arg-type]
    history = train(trees, tmp_path / "t", progress=False)
    assert history[-1]["trajectories"] == 2 * 2  # 2 tasks × 1 tree × (1 + 1·1) leaves
    config = TrainConfig(**{**TINY, "group_size": 4}, steps=1, recipe="grpo_roc")  # type: ignore[arg-type]
    history = train(config, tmp_path / "r", progress=False)
    assert history[-1]["kept"] <= history[-1]["trajectories"]


@pytest.mark.parametrize(
    "bad", [{"steps": -1}, {"group_size": 0}, {"rollout": "forest"}, {"lr": 0.0}, {"env": "chess"},
            {"env_options": {"shape": "blob"}}]
)
def test_bad_configs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**{**TINY, **bad}).check()  # type: ignore[arg-type]


def test_sequence_logprobs_lays_out_prompt_then_response() -> None:
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            seen.append(input_ids.clone())
            logits = torch.zeros(*input_ids.shape, 200)
            logits[..., 7] = 5.0
            return type("Out", (), {"logits": logits})()

    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]
    responses = torch.arange(100, 116).reshape(4, 4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 3] = False  # the last column is padding everywhere: not computed, 0 there
    logp, _ = sequence_logprobs(Recorder(), prompts, responses, 1.0, pad_id=0, mask=mask)
    want = torch.zeros(4, 5 + 3, dtype=torch.long)
    for i, p in enumerate(prompts):
        want[i, : len(p)] = torch.tensor(p)
        want[i, len(p) : len(p) + 3] = responses[i, :3]
    assert torch.equal(seen[0], want)
    assert logp.shape == (4, 4) and bool((logp[:, 3] == 0).all())
    expected = -torch.logsumexp(torch.tensor([5.0] + [0.0] * 199), 0)  # token ids ≥ 100 are not the favoured 7
    torch.testing.assert_close(logp[:, :3], expected.expand(4, 3))
