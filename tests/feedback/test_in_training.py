"""Feedback methods in the trainer: the OPD teacher pass, R3 in the loop, Critique-GRPO's off-policy update."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from stepcredit.feedback.opd import env_judge, judge_steps, teacher_logprobs
from stepcredit.feedback.r3 import R3Options, r3_rollouts
from stepcredit.generation import NoisyOracle, rollout_chains
from stepcredit.shaping.r3 import r3_reward
from stepcredit.train import TrainConfig, build_policy, train, update
from tests.support.train import TINY


@pytest.fixture(scope="module")
def policy() -> Any:
    return build_policy(TrainConfig(**TINY))  # type: ignore[arg-type]


def logprobs_of(model: Any, context: list[int], tokens: list[int]) -> torch.Tensor:
    """log π(tokens | context) by one plain forward pass on their concatenation."""
    ids = torch.tensor([[*context, *tokens]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    logp = torch.log_softmax(logits[len(context) - 1 : len(context) - 1 + len(tokens)], dim=-1)
    return logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def test_teacher_logprobs_score_the_students_tokens_under_the_hinted_context(policy: Any) -> None:
    batch = rollout_chains(TrainConfig(**TINY).make_env("train"), NoisyOracle(0.5, seed=0), range(3), group_size=2,  # type: ignore[arg-type]
                           chat_format=policy.format, seed=0)
    _, hints = judge_steps(batch, lambda t: env_judge(t) if t.step else type(env_judge(t))(0, "always a first hint"))
    assert any(h is not None for h in hints)
    teacher, hinted = teacher_logprobs(policy, batch, hints, 1.0, chunk=2)
    r = batch.rollouts
    assert batch.prompt_ids is not None and batch.response_ids is not None
    assert r.step_token_start is not None and r.step_token_end is not None
    expected = torch.zeros_like(teacher)
    for s, hint in enumerate(hints):
        if hint is None:
            continue
        i, a, b = int(r.step_traj[s]), int(r.step_token_start[s]), int(r.step_token_end[s])
        context = [*batch.prompt_ids[i], *batch.response_ids[i, :a].tolist()]
        hinted_context = [*context[:-1], *policy.format.encode_feedback(hint)]
        expected[i, a:b] = logprobs_of(policy.model, hinted_context, batch.response_ids[i, a:b].tolist())
    assert torch.equal(hinted, expected != 0)
    torch.testing.assert_close(teacher, expected, atol=1e-5, rtol=1e-5)


def test_r3_scores_the_reference_after_each_rollouts_reasoning(policy: Any) -> None:
    config = TrainConfig(**TINY)  # type: ignore[arg-type]
    batch = rollout_chains(config.make_env("train"), NoisyOracle(0.5, seed=1), range(3), group_size=3,
                           chat_format=policy.format, seed=0)
    shaped, kept, stats = r3_rollouts(policy, batch, R3Options(weighting="uniform", outcome_weight=0.0, r3_weight=1.0),
                                      1.0)
    assert kept is None and set(stats) == {"r3_mean", "r3_success_gap"}
    assert batch.prompt_ids is not None and batch.references is not None
    ref_lp = []
    for i, path in enumerate(batch.paths):
        # every run of this env answers at the end: the reasoning is everything before the answer
        before = batch.prompt_ids[i] if len(path) == 1 else batch.nodes[path[-2]].context.token_ids
        assert before is not None
        ref_lp.append(logprobs_of(policy.model, before, policy.format.encode_action(f"answer {batch.references[i]}")))
    width = max(len(x) for x in ref_lp)
    table = torch.zeros(len(ref_lp), width, dtype=torch.float64)
    mask = torch.zeros(len(ref_lp), width, dtype=torch.bool)
    for i, x in enumerate(ref_lp):
        table[i, : len(x)], mask[i, : len(x)] = x.double(), True
    want = r3_reward(table, mask, batch.rollouts.group, weighting="uniform")
    torch.testing.assert_close(shaped.outcome.double(), want, atol=1e-5, rtol=1e-5)
    # uniform weighting: the mean log-prob of the reference tokens (DRO-Aggr / L)
    torch.testing.assert_close(shaped.outcome.double(), torch.stack([x.double().mean() for x in ref_lp]), atol=1e-5,
                               rtol=1e-5)
    filtered, kept, stats = r3_rollouts(policy, batch, R3Options(weighting="linear", outcome_weight=1.0, r3_weight=0.5,
                                                             keep_quantile=0.5), 1.0)
    assert kept is not None and kept.numel() == 6 and stats["r3_kept"] == pytest.approx(6 / 9)  # 2 of 3 groups
    assert filtered.num_trajectories == 6


def test_refinement_tokens_ignore_the_old_policy(policy: Any) -> None:
    """Policy shaping has no ratio to π_old: changing the refinement's old log-probs changes nothing,
    changing an on-policy row's does."""
    config = TrainConfig(**TINY, critique={})  # type: ignore[arg-type]
    batch = rollout_chains(config.make_env("train"), policy, range(2), group_size=2, chat_format=policy.format, seed=0)
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.old_logprobs is not None
    mask = batch.rollouts.response_mask
    assert mask is not None
    advantages = torch.where(mask, torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None], 0.0)
    off = torch.tensor([True, False, True, False])

    def step(old: torch.Tensor) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(policy.model)
        clone = copy.copy(policy)
        clone.model = model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        update(clone, optimizer, config, batch.prompt_ids, batch.response_ids, old, advantages, mask, off_policy=off)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    base = step(batch.old_logprobs)
    moved_off = batch.old_logprobs.clone()
    moved_off[off] -= 0.7
    same = step(moved_off)
    assert all(torch.equal(base[k], same[k]) for k in base)
    moved_on = batch.old_logprobs.clone()
    moved_on[~off] -= 0.7
    different = step(moved_on)
    assert not all(torch.equal(base[k], different[k]) for k in base)


@pytest.mark.parametrize("method", [{"critique": {}, "recipe": "dr_grpo"}, {"opd": {"votes": 2}}, {"r3": {}}])
def test_one_step_of_each_method_trains_deterministically(method: dict[str, Any], tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "group_size": 3}, steps=1, **method)  # type: ignore[arg-type]
    a = train(config, tmp_path / "a", progress=False)
    b = train(config, tmp_path / "b", progress=False)
    strip = [{k: v for k, v in row.items() if not k.startswith("time_")} for row in (a[-1], b[-1])]
    assert strip[0] == strip[1]
    keys = {"critique": "refinements", "opd": "hinted_steps", "r3": "r3_mean"}
    assert next(keys[k] for k in keys if k in method) in a[-1]


@pytest.mark.parametrize(
    "bad,match",
    [({"critique": {"gama": 0.1}}, "unknown option"), ({"opd": {"judge": "gpt"}}, "judge must be 'env'"),
     ({"critique": {}, "rollout": "trees"}, "refines chains"), ({"skills": 3}, "mapping of options"),
     ({"skills": {"threshold": 1.5}}, "threshold"), ({"opd": {"votes": 0}}, "votes")],
)
def test_method_options_are_checked(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY, **bad}).check()  # type: ignore[arg-type]


def test_r3_needs_a_reference_answer(policy: Any) -> None:
    config = TrainConfig(env="booking", depth=1)
    from stepcredit.generation import OraclePolicy

    batch = rollout_chains(config.make_env("train"), OraclePolicy(), range(1), group_size=2)
    with pytest.raises(ValueError, match="reference answer"):
        r3_rollouts(policy, batch, R3Options(), 1.0)


def test_feedback_demonstrations_join_the_warm_start(policy: Any) -> None:
    from stepcredit.train import warm_start

    lines: list[str] = []
    config = TrainConfig(**TINY, sft_feedback=8)  # type: ignore[arg-type]
    fresh = build_policy(config)
    warm_start(fresh, config, lines.append)
    fed = int(lines[-1].split("; ")[1].split(" of them")[0])
    assert 8 < fed <= 16 and "use a critique or a hint" in lines[-1]  # ≤ 8 refinements + 8 hinted answers


def test_skills_bank_prompts_evolution_and_resume(tmp_path: Path) -> None:
    from stepcredit.feedback.skills import HEADER, SkillBank, Skills

    config = TrainConfig(**{**TINY, "sft_demos": 24}, steps=2, checkpoint_every=1,  # type: ignore[arg-type]
                         skills={"threshold": 1.0, "max_new_skills": 2})
    (skills,) = config.feedback()
    assert isinstance(skills, Skills)
    bank = skills.initial
    assert isinstance(bank, SkillBank) and len(bank) > 0
    (again_skills,) = config.feedback()
    assert again_skills.initial.to_json() == bank.to_json()  # deterministic
    assert TrainConfig(**TINY).feedback() == []  # type: ignore[arg-type]
    obs, info = skills.make_env(config.make_env("train"), "train")().reset(options={"task": 0})
    assert obs.startswith(HEADER) and info["skills"]
    history = train(config, tmp_path / "s", progress=False)
    saved = SkillBank.load(tmp_path / "s" / "skills.json")
    assert history[-1]["skills"] == float(len(saved)) >= len(bank)  # every type below 100%: it evolves
    assert sum(h.get("skills_added", 0) for h in history) == len(saved) - len(bank)
    again = train(dataclasses.replace(config, steps=3), tmp_path / "s", resume=True, progress=False)
    assert again[1]["skills"] == history[1]["skills"]
