"""The group bootstrap (per-group sufficient statistics) against the dense (samples × units) original."""

from __future__ import annotations

import math

import pytest
import torch

from stepcredit.auditing import metrics as M
from stepcredit.core.credit import Credit
from stepcredit.envs.synthetic import make_rollouts
from stepcredit.recipe import Recipe
from tests.support.audit_oracles import dense_bootstrap_intervals, dense_bootstrap_values, dense_headline


def random_units(seed: int, num_groups: int, num_units: int, *, nan_share: float = 0.1, levels: int = 7) -> M.Units:
    """Units with few distinct credits (ties within and across groups, between +1 and −1 units), some
    uncredited (NaN), some groups without units."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(num_groups, (num_units,), generator=g)
    traj = group * 4 + torch.randint(4, (num_units,), generator=g)
    failed_traj = torch.rand(num_groups * 4, generator=g) < 0.5
    label = (torch.randint(3, (num_units,), generator=g) - 1).to(torch.int8)
    credit = (torch.randint(levels, (num_units,), generator=g) - levels // 2).float() / 2
    credit[torch.rand(num_units, generator=g) < nan_share] = float("nan")
    return M.Units("call", label, credit, failed_traj[traj], group, traj)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol: float) -> None:
    assert set(a) == set(b) == set(M.HEADLINE)
    for k in M.HEADLINE:
        torch.testing.assert_close(a[k], b[k], equal_nan=True, **({"rtol": 0.0, "atol": 0.0} | tol), msg=k)


CASES = [(0, 5, 40), (1, 12, 300), (2, 30, 2000), (3, 1, 50), (4, 50, 30)]


@pytest.mark.parametrize(("seed", "groups", "units"), CASES)
def test_replicates_equal_the_dense_evaluation_bit_for_bit(seed, groups, units):
    u = random_units(seed, groups, units)
    counts = M.bootstrap_counts(groups, 300, seed)
    stats = M.group_sums(u, groups)
    want = dense_headline(u, counts[:, u.group])
    same(M.group_headline(stats, counts), want)  # integer weights: every sum is exact
    same(M.group_headline(stats, counts, chunk_elements=1), want)  # one replicate per chunk
    same(M.group_headline(stats, counts, chunk_elements=units * 3 + 1), want)  # chunks that do not divide
    assert not torch.isnan(want["auroc_all"]).all() or groups == 1  # the comparison is not all NaN


@pytest.mark.parametrize(("seed", "groups", "units"), CASES)
def test_intervals_equal_the_dense_bootstrap(seed, groups, units):
    u = random_units(seed, groups, units)
    got = M.bootstrap_intervals(u, groups, samples=500, seed=seed + 10)
    want = dense_bootstrap_intervals(u, groups, samples=500, seed=seed + 10)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9, nan_ok=True), k
    other = M.bootstrap_intervals(u, groups, samples=500, seed=seed + 11)
    assert groups == 1 or other != got  # the seed is used


def test_point_estimate_is_the_unit_level_headline():
    u = random_units(5, 20, 800)
    point = M.headline(u, torch.ones(1, 800, dtype=torch.float64))
    same(M.group_headline(M.group_sums(u, 20), torch.ones(1, 20, dtype=torch.float64)), point)
    same(point, dense_headline(u, torch.ones(1, 800, dtype=torch.float64)))


def test_fractional_group_weights_match_the_dense_evaluation():
    u = random_units(6, 15, 600)
    w = torch.rand(40, 15, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    w[:, 3] = 0.0  # a group left out entirely
    same(M.group_headline(M.group_sums(u, 15), w), dense_headline(u, w[:, u.group]), rtol=1e-12, atol=1e-12)


def test_empty_classes_give_nan_like_the_dense_evaluation():
    u = random_units(7, 6, 60)
    only_good = M.Units("call", torch.ones_like(u.label), u.credit, u.failed, u.group, u.traj)
    uncredited = M.Units("call", u.label, torch.full_like(u.credit, float("nan")), u.failed, u.group, u.traj)
    counts = M.bootstrap_counts(6, 50, 7)
    for v in (only_good, uncredited):
        got = M.group_headline(M.group_sums(v, 6), counts)
        same(got, dense_headline(v, counts[:, v.group]))
        assert torch.isnan(got["auroc_all"]).all()
    assert all(math.isnan(x) for pair in M.bootstrap_intervals(uncredited, 6, samples=50).values() for x in pair)


@pytest.mark.parametrize("recipe", ["grpo", "call_consensus", "action_anchor"])
def test_real_recipe_credit_matches_the_dense_bootstrap(recipe):
    r = make_rollouts(40, 8, seed=4)
    result = Recipe.load(recipe).run(r)
    assert result.kept.numel() == r.num_trajectories
    u = M.units(r, result.credit)
    assert isinstance(result.credit, Credit) and u.kind == "call"
    same(
        M.group_headline(M.group_sums(u, r.num_groups), M.bootstrap_counts(r.num_groups, 200, 1)),
        dense_bootstrap_values(u, r.num_groups, samples=200, seed=1),
    )
    got = M.bootstrap_intervals(u, r.num_groups, samples=200, seed=1)
    want = dense_bootstrap_intervals(u, r.num_groups, samples=200, seed=1)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9, nan_ok=True), k


def test_bootstrap_counts_draw_num_groups_per_replicate():
    counts = M.bootstrap_counts(9, 100, 0)
    assert counts.shape == (100, 9) and counts.dtype == torch.float64
    assert (counts.sum(1) == 9).all() and (counts >= 0).all()
    assert torch.equal(counts, M.bootstrap_counts(9, 100, 0))
    assert not torch.equal(counts, M.bootstrap_counts(9, 100, 1))
