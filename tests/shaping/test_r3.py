"""DRO's R3: hand-computed reflectivity, weights, rewards and filter; invariances; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit.shaping.r3 import group_reference_mask, r3_filter, r3_reward, r3_weights, reflectivity

NAN = math.nan
F64 = torch.float64

# One group of 3 rollouts, a reference of 3 tokens (rows: rollouts, columns: reference tokens).
#   token 0: -1, -1, -1       mean -1, σ = 0 (the reasoning does not change it)
#   token 1: -0.5, -1.5, -1   mean -1, squared deviations .25, .25, 0 → σ² = 1/6, σ = 1/√6 ≈ 0.4082
#   token 2: -2, -1, -3       mean -2, squared deviations 0, 1, 1     → σ² = 2/3, σ = 2/√6 ≈ 0.8165
# linear weights σ / Σσ = (0, 1/3, 2/3)
ONE = torch.tensor([[-1.0, -0.5, -2.0], [-1.0, -1.5, -1.0], [-1.0, -1.0, -3.0]], dtype=F64)
ONE_MASK = torch.ones(3, 3, dtype=torch.bool)
ONE_GROUP = torch.zeros(3, dtype=torch.int64)
S = 1 / math.sqrt(6)


def test_reflectivity_weights_and_reward_by_hand():
    sigma = reflectivity(ONE, ONE_MASK, ONE_GROUP)
    assert sigma.shape == (1, 3) and sigma.dtype == F64
    assert sigma[0, 0].item() == 0.0  # identical across rollouts: exactly 0, not rounding noise
    assert sigma[0].tolist() == pytest.approx([0.0, S, 2 * S], abs=1e-12)
    mask = group_reference_mask(ONE_MASK, ONE_GROUP)
    w = r3_weights(sigma, mask)
    assert w[0].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-12)
    # R3_i = (1/3)·x_i1 + (2/3)·x_i2: -1/6 - 4/3 = -1.5;  -1/2 - 2/3 = -7/6;  -1/3 - 2 = -7/3
    got = r3_reward(ONE, ONE_MASK, ONE_GROUP)
    assert got.tolist() == pytest.approx([-1.5, -7 / 6, -7 / 3], abs=1e-12)
    # the token every rollout agrees on carries no weight: changing it for all rollouts changes nothing
    shifted = ONE.clone()
    shifted[:, 0] = -9.0
    assert torch.allclose(r3_reward(shifted, ONE_MASK, ONE_GROUP), got)


def test_softmax_and_uniform_weights_by_hand():
    sigma = reflectivity(ONE, ONE_MASK, ONE_GROUP)
    mask = group_reference_mask(ONE_MASK, ONE_GROUP)
    for tau in (0.5, 1.0, 3.0):
        e = [math.exp(0 / tau), math.exp(S / tau), math.exp(2 * S / tau)]
        want = [v / sum(e) for v in e]
        assert r3_weights(sigma, mask, weighting="softmax", temperature=tau)[0].tolist() == pytest.approx(want)
        rew = r3_reward(ONE, ONE_MASK, ONE_GROUP, weighting="softmax", temperature=tau)
        assert rew.tolist() == pytest.approx((ONE * torch.tensor(want, dtype=F64)).sum(1).tolist())
    assert r3_weights(sigma, mask, weighting="uniform")[0].tolist() == pytest.approx([1 / 3] * 3)
    # uniform: row means -3.5/3, -3.5/3, -5/3 — DRO-Aggr (the row sums) divided by |y| = 3
    got = r3_reward(ONE, ONE_MASK, ONE_GROUP, weighting="uniform")
    assert got.tolist() == pytest.approx([-3.5 / 3, -3.5 / 3, -5 / 3])


def test_groups_with_different_reference_lengths():
    # group 0: the example above; group 1: two rollouts, a 2-token reference (column 2 is padding)
    #   token 0: -0.2, -0.6 → mean -0.4, σ = 0.2;  token 1: -1, -1 → σ = 0  ⇒ linear weights (1, 0)
    x = torch.tensor(
        [[-1.0, -0.5, -2.0], [-0.2, -1.0, NAN], [-1.0, -1.5, -1.0], [-0.6, -1.0, 5.0], [-1.0, -1.0, -3.0]],
        dtype=F64,
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    group = torch.tensor([0, 1, 0, 1, 0])
    sigma = reflectivity(x, mask, group)
    assert sigma.flatten().tolist() == pytest.approx([0.0, S, 2 * S, 0.2, 0.0, 0.0], abs=1e-12)
    assert group_reference_mask(mask, group).tolist() == [[True] * 3, [True, True, False]]
    got = r3_reward(x, mask, group)
    assert got.tolist() == pytest.approx([-1.5, -0.2, -7 / 6, -0.6, -7 / 3], abs=1e-12)
    # uniform: group 1 averages over its 2 real tokens only
    uni = r3_reward(x, mask, group, weighting="uniform")
    assert uni.tolist() == pytest.approx([-3.5 / 3, -0.6, -3.5 / 3, -0.8, -5 / 3])
    # max_j σ: group 0 → 2/√6 ≈ 0.816, group 1 → 0.2
    assert r3_filter(x, mask, group, min_spread=0.5).tolist() == [True, False, True, False, True]
    assert r3_filter(x, mask, group, min_spread=0.19).all()


def test_zero_spread_singletons_and_empty_references():
    # group 0: every token identical → all σ 0 → linear falls back to uniform (the mean log-prob)
    # group 1: one rollout → σ = 0 (population std) → uniform; group 2: an empty reference → 0
    x = torch.tensor([[-1.0, -3.0], [-1.0, -3.0], [-0.4, -0.8], [NAN, NAN]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 0]], dtype=torch.bool)
    group = torch.tensor([0, 0, 1, 2])
    assert reflectivity(x, mask, group).abs().sum().item() == 0.0
    for weighting in ("linear", "softmax", "uniform"):
        got = r3_reward(x, mask, group, weighting=weighting)
        assert got.tolist() == pytest.approx([-2.0, -2.0, -0.6, 0.0])
    assert r3_filter(x, mask, group, min_spread=0.0).all()
    assert not r3_filter(x, mask, group, min_spread=1e-9).any()


def test_unused_group_ids():
    sigma = reflectivity(ONE, ONE_MASK, ONE_GROUP + 1, num_groups=3)
    assert sigma[0].abs().sum() == 0 and sigma[2].abs().sum() == 0
    assert torch.allclose(r3_reward(ONE, ONE_MASK, ONE_GROUP + 1, num_groups=3), r3_reward(ONE, ONE_MASK, ONE_GROUP))
    assert r3_weights(sigma, group_reference_mask(ONE_MASK, ONE_GROUP + 1, 3))[2].abs().sum() == 0


def test_baseline_subtraction_by_hand():
    b = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5], [-1.0, -1.0, -1.0]], dtype=F64)
    # σ is taken on the uncorrected log-probs: weights stay (0, 1/3, 2/3)
    #   R3_0 = (1/3)(-0.5 + 1) + (2/3)(-2 + 1)   = 1/6 - 2/3 = -1/2
    #   R3_1 = (1/3)(-1.5 + .5) + (2/3)(-1 + .5) = -1/3 - 1/3 = -2/3
    #   R3_2 = (1/3)(-1 + 1) + (2/3)(-3 + 1)     = -4/3
    got = r3_reward(ONE, ONE_MASK, ONE_GROUP, baseline_logprobs=b)
    assert got.tolist() == pytest.approx([-0.5, -2 / 3, -4 / 3], abs=1e-12)
    # a baseline shared by the group's rollouts shifts every reward by Σ_j w_j b_j (cancels in GRPO)
    shared = torch.tensor([-0.3, -0.9, -0.6], dtype=F64).expand(3, 3)
    shift = (1 / 3) * -0.9 + (2 / 3) * -0.6
    plain = r3_reward(ONE, ONE_MASK, ONE_GROUP)
    assert torch.allclose(r3_reward(ONE, ONE_MASK, ONE_GROUP, baseline_logprobs=shared), plain - shift)
    # NaN in the baseline at masked positions is ignored
    x, mask = ONE.clone(), ONE_MASK.clone()
    mask[:, 2] = False
    nb = b.clone()
    nb[:, 2] = NAN
    assert torch.isfinite(r3_reward(x, mask, ONE_GROUP, baseline_logprobs=nb)).all()


def test_filter_min_spread_and_keep_quantile():
    # 5 groups of two rollouts, one token: values (−1 ± s) → σ = s; spreads 0.3, 0, 0.5, 0.3, 0.1
    spreads = [0.3, 0.0, 0.5, 0.3, 0.1]
    x = torch.tensor([[-1.0 + d] for s in spreads for d in (s, -s)], dtype=F64)
    mask = torch.ones(10, 1, dtype=torch.bool)
    group = torch.arange(5).repeat_interleave(2)
    assert reflectivity(x, mask, group)[:, 0].tolist() == pytest.approx(spreads)

    def kept(**kw):
        return sorted(set(group[r3_filter(x, mask, group, **kw)].tolist()))

    assert kept(min_spread=0.3) == [0, 2, 3]  # ≥ threshold is kept
    assert kept(min_spread=0.0) == [0, 1, 2, 3, 4]
    assert kept(min_spread=0.6) == []
    assert kept(keep_quantile=1.0) == [0, 1, 2, 3, 4]
    assert kept(keep_quantile=0.2) == [2]  # ceil(0.2·5) = 1
    assert kept(keep_quantile=0.4) == [0, 2]  # ceil(2) = 2: groups 0 and 3 tie at 0.3, the lower id wins
    assert kept(keep_quantile=0.41) == [0, 2, 3]  # ceil(2.05) = 3
    assert kept(keep_quantile=0.01) == [2]  # at least one group for any q > 0
    assert kept(keep_quantile=0.6, min_spread=0.31) == [2]  # both: the top 3 and ≥ 0.31
    # the mask is per trajectory: both rollouts of a group share the decision
    keep = r3_filter(x, mask, group, keep_quantile=0.4)
    assert keep.tolist() == [True, True, False, False, True, True, False, False, False, False]


def test_keep_quantile_rounding_and_empty_groups():
    # 10 groups, spreads 0.1 … 1.0: 0.7 · 10 is 7.000000000000001 in floating point, and keeps 7
    s = torch.arange(1, 11, dtype=F64) / 10
    x = torch.stack([-1 + s, -1 - s], 1).reshape(-1, 1)
    group = torch.arange(10).repeat_interleave(2)
    mask = torch.ones(20, 1, dtype=torch.bool)
    keep = r3_filter(x, mask, group, keep_quantile=0.7)
    assert sorted(set(group[keep].tolist())) == [3, 4, 5, 6, 7, 8, 9]
    # group ids without rollouts do not count towards the fraction
    keep = r3_filter(x, mask, group * 2, num_groups=25, keep_quantile=0.7)
    assert int(keep.sum()) == 14


@st.composite
def batches(draw, max_n: int = 9, num_groups: int = 3, length: int = 4):
    """Random rollouts in random group order; each group has its own reference length (0 … length),
    shared by its rollouts; log-probs on a 1/8 grid (repeats give exact zero spreads)."""
    n = draw(st.integers(1, max_n))
    group = draw(st.lists(st.integers(0, num_groups - 1), min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(0, length), min_size=num_groups, max_size=num_groups))
    values = draw(st.lists(st.integers(-48, 0), min_size=n * length, max_size=n * length))
    g = torch.tensor(group, dtype=torch.int64)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[g][:, None]
    x = torch.tensor(values, dtype=F64).view(n, length) / 8
    return x, mask, g


def reference_rewards(x, mask, group, weighting, tau=1.0):
    """A plain per-group loop with numpy: the formulas written out directly."""
    x, mask, group = x.numpy(), mask.numpy(), group.numpy()
    out = np.zeros(len(group))
    for g in np.unique(group):
        rows = group == g
        real = mask[rows][0]
        vals = x[rows][:, real]
        if vals.shape[1] == 0:
            continue
        sigma = vals.std(axis=0, ddof=0)
        sigma[sigma < 1e-12] = 0.0
        if weighting == "uniform" or (weighting == "linear" and sigma.sum() == 0):
            w = np.full(vals.shape[1], 1 / vals.shape[1])
        elif weighting == "linear":
            w = sigma / sigma.sum()
        else:
            e = np.exp(sigma / tau)
            w = e / e.sum()
        out[rows] = vals @ w
    return out


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["linear", "softmax", "uniform"]))
def test_matches_per_group_loop(batch, weighting):
    x, mask, group = batch
    got = r3_reward(x, mask, group, weighting=weighting, temperature=0.7)
    assert np.allclose(got.numpy(), reference_rewards(x, mask, group, weighting, 0.7), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_uniform_is_dro_aggr_over_length(batch):
    x, mask, group = batch
    aggr = torch.where(mask, x, 0.0).sum(1)  # DRO-Aggr: Σ_j log π(y_j | q, ĉ_i, y_<j)
    length = mask.sum(1).clamp_min(1)
    assert torch.allclose(r3_reward(x, mask, group, weighting="uniform"), aggr / length)


@settings(max_examples=60, deadline=None)
@given(batches(), st.data())
def test_permutation_equivariance(batch, data):
    x, mask, group = batch
    perm = torch.tensor(data.draw(st.permutations(range(len(group)))))
    for weighting in ("linear", "softmax"):
        base = r3_reward(x, mask, group, weighting=weighting, num_groups=3)
        permuted = r3_reward(x[perm], mask[perm], group[perm], weighting=weighting, num_groups=3)
        assert torch.allclose(permuted, base[perm], atol=1e-12)
    assert torch.allclose(reflectivity(x[perm], mask[perm], group[perm], 3), reflectivity(x, mask, group, 3))
    base = r3_filter(x, mask, group, keep_quantile=0.5, num_groups=3)
    assert torch.equal(r3_filter(x[perm], mask[perm], group[perm], keep_quantile=0.5, num_groups=3), base[perm])


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from([NAN, math.inf, -math.inf, 7.0, -1e30]))
def test_masked_positions_are_ignored(batch, garbage):
    x, mask, group = batch
    dirty = torch.where(mask, x, torch.full_like(x, garbage))
    base = torch.where(mask, -0.25, torch.full_like(x, -garbage))
    clean_base = torch.where(mask, -0.25, torch.zeros_like(x))
    assert torch.equal(reflectivity(dirty, mask, group, 3), reflectivity(x, mask, group, 3))
    for weighting in ("linear", "softmax", "uniform"):
        want = r3_reward(x, mask, group, weighting=weighting, baseline_logprobs=clean_base)
        assert torch.equal(r3_reward(dirty, mask, group, weighting=weighting, baseline_logprobs=base), want)
    for kw in ({"min_spread": 0.2}, {"keep_quantile": 0.5}):
        assert torch.equal(r3_filter(dirty, mask, group, **kw), r3_filter(x, mask, group, **kw))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_weights_are_a_distribution_over_real_positions(batch):
    x, mask, group = batch
    sigma = reflectivity(x, mask, group, 3)
    gmask = group_reference_mask(mask, group, 3)
    assert (sigma >= 0).all() and (sigma[~gmask] == 0).all()
    for weighting in ("linear", "softmax", "uniform"):
        w = r3_weights(sigma, gmask, weighting=weighting)
        assert (w >= 0).all() and (w[~gmask] == 0).all()
        has = gmask.any(1)
        assert torch.allclose(w.sum(1)[has], torch.ones(int(has.sum()), dtype=F64))
    # linear: more spread, more weight
    w = r3_weights(sigma, gmask)
    for g in range(3):
        s, v = sigma[g][gmask[g]], w[g][gmask[g]]
        assert (v[torch.argsort(s)].diff() >= -1e-15).all()


def test_float32_and_stability():
    x32 = ONE.float()
    got = r3_reward(x32, ONE_MASK, ONE_GROUP)
    assert got.dtype == torch.float32 and reflectivity(x32, ONE_MASK, ONE_GROUP).dtype == torch.float32
    assert got.tolist() == pytest.approx([-1.5, -7 / 6, -7 / 3], abs=1e-6)
    # a large common offset: the centred std keeps the spread (1/√6, 2/√6) of the small differences
    far = ONE - 30.0
    assert reflectivity(far, ONE_MASK, ONE_GROUP)[0].tolist() == pytest.approx([0.0, S, 2 * S], abs=1e-12)
    assert r3_reward(far, ONE_MASK, ONE_GROUP).tolist() == pytest.approx([-31.5, -31 - 1 / 6, -32 - 1 / 3])


def test_input_errors():
    x, mask, group = ONE.clone(), ONE_MASK, ONE_GROUP
    y = x.clone()
    y[1, 2] = y[2, 1] = NAN  # the first one (row-major) is named
    with pytest.raises(ValueError, match=r"ref_logprobs\[1, 2\] = nan is not finite \(trajectory 1, reference"):
        r3_reward(y, mask, group)
    for bad in (math.inf, -math.inf):
        y = x.clone()
        y[2, 0] = bad
        with pytest.raises(ValueError, match=r"ref_logprobs\[2, 0\].*not finite.*trajectory 2, reference position 0"):
            reflectivity(y, mask, group)
    y = x.clone()
    y[0, 1] = 0.25
    with pytest.raises(ValueError, match=r"ref_logprobs\[0, 1\] = 0.25 is positive"):
        r3_filter(y, mask, group, min_spread=0.1)
    with pytest.raises(ValueError, match=r"baseline_logprobs\[0, 0\] = nan"):
        r3_reward(x, mask, group, baseline_logprobs=torch.full_like(x, NAN))
    with pytest.raises(ValueError, match="baseline_logprobs has shape"):
        r3_reward(x, mask, group, baseline_logprobs=x[:, :2])
    with pytest.raises(ValueError, match="ref_logprobs has shape"):
        r3_reward(x[:, :2], mask, group)
    with pytest.raises(ValueError, match="floating-point"):
        r3_reward(x.long(), mask, group)
    with pytest.raises(ValueError, match="ref_mask must be a 2-D bool"):
        r3_reward(x, mask.long(), group)
    with pytest.raises(ValueError, match="group must be an integer"):
        r3_reward(x, mask, group.double())
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        r3_reward(x, mask, group[:2])
    with pytest.raises(ValueError, match=r"group\[1\] = -1 is out of range"):
        r3_reward(x, mask, torch.tensor([0, -1, 0]))
    with pytest.raises(ValueError, match=r"group\[2\] = 4 is out of range.*\[0, 2\)"):
        r3_reward(x, mask, torch.tensor([0, 1, 4]), num_groups=2)


def test_group_must_share_its_reference_mask():
    x = torch.full((4, 3), -1.0, dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    group = torch.tensor([0, 1, 1, 0])
    msg = r"group 0: .*do not share one reference mask \(reference position 1 is real for trajectory 0 but masked for "
    for call in (
        lambda: r3_reward(x, mask, group),
        lambda: reflectivity(x, mask, group),
        lambda: r3_filter(x, mask, group, min_spread=0.0),
        lambda: group_reference_mask(mask, group),
    ):
        with pytest.raises(ValueError, match=msg + "trajectory 3"):
            call()


def test_parameter_errors():
    sigma = reflectivity(ONE, ONE_MASK, ONE_GROUP)
    gmask = group_reference_mask(ONE_MASK, ONE_GROUP)
    with pytest.raises(ValueError, match="weighting must be"):
        r3_weights(sigma, gmask, weighting="threshold")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weighting must be"):
        r3_reward(ONE, ONE_MASK, ONE_GROUP, weighting="mean")  # type: ignore[arg-type]
    for tau in (0.0, -1.0, math.inf, NAN):
        with pytest.raises(ValueError, match="temperature must be"):
            r3_weights(sigma, gmask, weighting="softmax", temperature=tau)
    with pytest.raises(ValueError, match=r"sigma\[0, 1\] = -1.0: a std must be"):
        r3_weights(torch.tensor([[0.0, -1.0, 0.0]], dtype=F64), gmask)
    with pytest.raises(ValueError, match="sigma must be"):
        r3_weights(sigma[:, :2], gmask)
    with pytest.raises(ValueError, match="needs min_spread, keep_quantile or both"):
        r3_filter(ONE, ONE_MASK, ONE_GROUP)
    for q in (0.0, -0.5, 1.5, NAN):
        with pytest.raises(ValueError, match="keep_quantile must lie"):
            r3_filter(ONE, ONE_MASK, ONE_GROUP, keep_quantile=q)
    for m in (-0.1, NAN, math.inf):
        with pytest.raises(ValueError, match="min_spread must be"):
            r3_filter(ONE, ONE_MASK, ONE_GROUP, min_spread=m)
