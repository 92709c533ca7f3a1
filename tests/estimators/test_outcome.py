"""Outcome-level estimators: hand-computed examples and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit import Rollouts, grpo
from stepcredit.core import Texts
from stepcredit.estimators import ms_grpo, reinforce_pp_baseline, rloo
from stepcredit.io import from_trainer_tensors


def batch(outcome, group, steps=None, reward=None):
    steps = steps or [1] * len(outcome)
    offsets = [0]
    for s in steps:
        offsets.append(offsets[-1] + s)
    return Rollouts(group=group, outcome=outcome, step_offsets=offsets, reward=reward)


def test_grpo_by_hand():
    # group 0: outcomes 1, 0, 0 → mean 1/3, unbiased std sqrt(1/3); group 1: singleton 0.5
    r = batch([1.0, 0.0, 0.0, 0.5], [0, 0, 0, 1])
    std = math.sqrt(1 / 3)
    want = [(2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), 0.5 / (1 + 1e-6)]
    assert grpo(r).trajectory.tolist() == pytest.approx(want, rel=1e-6)
    assert grpo(r, norm="mean").trajectory.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.5], rel=1e-6)
    assert grpo(r, singleton="zero").trajectory[3] == 0.0
    assert grpo(r, unbiased=False, eps=0.0).trajectory[0].item() == pytest.approx((2 / 3) / math.sqrt(2 / 9))


def test_rloo_by_hand():
    r = batch([1.0, 0.0, 0.0, 0.5], [0, 0, 0, 1])
    assert rloo(r).trajectory.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.5])


def test_reinforce_pp_baseline_by_hand_per_trajectory():
    r = batch([1.0, 0.0, 2.0, 0.0], [0, 0, 1, 1])
    a = torch.tensor([0.5, -0.5, 1.0, -1.0], dtype=torch.float64)  # group-mean centred
    mean = a.sum() / (4 + 1e-8)
    var = ((a - mean) ** 2).sum() / (4 + 1e-8) * 4 / 3
    want = ((a - mean) / torch.sqrt(var + 1e-8)).float()
    got = reinforce_pp_baseline(r, weighting="trajectories").trajectory
    assert torch.allclose(got, want, atol=1e-7)
    assert reinforce_pp_baseline(r).trajectory.tolist() == got.tolist()  # auto → trajectories (no tokens)
    with pytest.raises(ValueError, match="token columns"):
        reinforce_pp_baseline(r, weighting="tokens")
    with pytest.raises(ValueError, match="weighting"):
        reinforce_pp_baseline(r, weighting="steps")  # type: ignore[arg-type]


def test_reinforce_pp_baseline_token_weighting():
    # trajectory 0 has 3 tokens, 1 has 1 token: the whitening weighs them 3 : 1
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = from_trainer_tensors(mask, [0, 1], outcome=torch.tensor([1.0, 0.0]))  # two singletons: a = R
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w = torch.tensor([3.0, 1.0], dtype=torch.float64)
    mean = (w * a).sum() / (4 + 1e-8)
    var = (w * (a - mean) ** 2).sum() / (4 + 1e-8) * 4 / 3
    want = ((a - mean) / torch.sqrt(var + 1e-8)).float()
    assert torch.allclose(reinforce_pp_baseline(r).trajectory, want, atol=1e-7)
    assert not torch.allclose(reinforce_pp_baseline(r, weighting="trajectories").trajectory, want, atol=1e-3)


def test_ms_grpo_uses_cumulative_episode_reward():
    # episode returns: 1 + 0.5 = 1.5, 0 + 0 + 1 = 1.0, 0 + 0 = 0
    r = batch([1.0, 0.0, 0.0], [0, 0, 0], steps=[2, 2, 1], reward=[0.5, 0.0, 0.0, 1.0, 0.0])
    ep = torch.tensor([1.5, 1.0, 0.0])
    want = (ep - ep.mean()) / (ep.std() + 1e-6)
    assert torch.allclose(ms_grpo(r).trajectory, want)
    credit = ms_grpo(r)
    assert torch.equal(credit.per_step(r), credit.trajectory[[0, 0, 1, 1, 2]])
    # no intermediate rewards: MS-GRPO is GRPO
    plain = batch([1.0, 0.0, 0.0], [0, 0, 0], steps=[2, 2, 1])
    assert torch.equal(ms_grpo(plain).trajectory, grpo(plain).trajectory)


@st.composite
def outcome_batches(draw):
    n = draw(st.integers(1, 24))
    groups = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    names = sorted(set(groups))
    dense = [names.index(x) for x in groups]
    kind = draw(st.sampled_from(["binary", "gauss", "huge", "equal"]))
    if kind == "binary":
        outcome = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    elif kind == "huge":
        outcome = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n, max_size=n))
    elif kind == "equal":
        outcome = [0.3] * n
    else:
        outcome = draw(st.lists(st.floats(-3, 3, width=32), min_size=n, max_size=n))
    return batch(outcome, dense)


ESTIMATORS = [
    ("grpo", lambda r: grpo(r)),
    ("dr_grpo", lambda r: grpo(r, norm="mean")),
    ("rloo", rloo),
    ("ms_grpo", lambda r: ms_grpo(r)),
]


@settings(max_examples=150, deadline=None)
@given(outcome_batches())
def test_group_mean_zero_and_finite(r):
    sizes = torch.bincount(r.group)
    for name, est in [*ESTIMATORS, ("rf++", reinforce_pp_baseline)]:
        adv = est(r).trajectory
        assert torch.isfinite(adv).all(), name
        if name in ("grpo", "dr_grpo", "rloo", "ms_grpo"):
            sums = torch.zeros(r.num_groups).index_add_(0, r.group, adv.double().float())
            scale = 1 + r.outcome.abs().max().item()
            for g in range(r.num_groups):
                if sizes[g] > 1:
                    assert abs(sums[g].item()) <= 1e-4 * scale * sizes[g], (name, g)


@settings(max_examples=100, deadline=None)
@given(outcome_batches(), st.randoms(use_true_random=False))
def test_permutation_equivariance(r, rnd):
    perm = list(range(r.num_trajectories))
    rnd.shuffle(perm)
    shuffled = r.select(perm)
    for name, est in [*ESTIMATORS, ("rf++", reinforce_pp_baseline)]:
        a = est(r).trajectory[perm]
        b = est(shuffled).trajectory
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * (1 + r.outcome.abs().max().item())), name


def test_adversarial_batches():
    one = batch([1.0], [0])
    assert grpo(one).trajectory.tolist() == pytest.approx([1 / (1 + 1e-6)])
    equal = batch([1.0] * 5, [0] * 5)
    for _, est in ESTIMATORS:
        assert torch.equal(est(equal).trajectory, torch.zeros(5))
    huge = batch([1e6, -1e6, 1e6, 0.0], [0, 0, 1, 1])
    for _, est in [*ESTIMATORS, ("rf++", reinforce_pp_baseline)]:
        assert torch.isfinite(est(huge).trajectory).all()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_masked_tokens_get_exactly_zero(data):
    b = data.draw(st.integers(1, 8))
    t = data.draw(st.integers(1, 12))
    mask = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=t, max_size=t), min_size=b, max_size=b)))
    outcome = torch.tensor(data.draw(st.lists(st.floats(-5, 5, width=32), min_size=b, max_size=b)))
    groups = data.draw(st.lists(st.integers(0, 2), min_size=b, max_size=b))
    r = from_trainer_tensors(mask, groups, outcome=outcome)
    for _, est in [*ESTIMATORS, ("rf++", reinforce_pp_baseline)]:
        tokens = est(r).to_tokens(r)
        assert tokens.shape == (b, t)
        assert torch.equal(tokens[~mask], torch.zeros(int((~mask).sum())))
        assert torch.isfinite(tokens).all()


# ------------------------------------------------------------------- hostile input
def one_step_batch(outcomes: list[float], group: list[int] | None = None) -> Rollouts:
    n = len(outcomes)
    g = group or [0] * n
    return Rollouts(group=g, outcome=outcomes, step_offsets=list(range(n + 1)), texts=Texts.create(n, max(g) + 1, n, 0))


@pytest.mark.parametrize("scale", [1.0, 1e10, 2e19, 1e30, 3e38])
def test_grpo_at_large_magnitudes(scale):
    adv = grpo(one_step_batch([scale, -scale])).trajectory
    assert torch.isfinite(adv).all()
    assert adv.tolist() == pytest.approx([0.7071067, -0.7071067], rel=1e-5)  # (x - mean) / std, n = 2


def test_constant_group_within_tolerance_is_exactly_zero():
    # equal in exact arithmetic, one ulp apart after summing in another order
    x, y, z = (torch.tensor(v, dtype=torch.float32) for v in (0.1, 0.2, 0.05))
    a, b = (x + y) + z, x + (y + z)
    assert a.item() != b.item()  # 0.35000002 and 0.34999999
    assert grpo(one_step_batch([a.item(), b.item(), b.item()])).trajectory.tolist() == [0.0, 0.0, 0.0]
    # a real difference, however small relative to the tolerance's scale, is kept
    assert grpo(one_step_batch([0.3, 0.3001, 0.3])).trajectory.abs().max() > 0.5
