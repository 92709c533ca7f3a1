"""Tree-GRPO, TreeRL, TreePO: hand-computed trees from the papers' definitions."""

from __future__ import annotations

import math

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.estimators import grpo, reinforce_pp_baseline, tree_grpo, treepo, treerl


def one_tree():
    """Task 0, one tree:            root
                                      a            (all three leaves)
                                   /     \\
                                  b       e
                                 / \\       \\
                                c   d       f
    leaves: L0 = a b c (R=1), L1 = a b d (R=0), L2 = a e f (R=0)."""
    return Rollouts(
        group=[0, 0, 0],
        outcome=[1.0, 0.0, 0.0],
        step_offsets=[0, 3, 6, 9],
        state=[1, 2, 3, 1, 2, 4, 1, 5, 6],
        tree=[0, 0, 0],
    )


def test_tree_grpo_inter_plus_intra():
    r = one_tree()
    g = grpo(r).trajectory
    assert torch.allclose(tree_grpo(r).trajectory, 2 * g)  # one tree: intra = inter
    # two trees: intra groups are the trees
    two = Rollouts(group=[0, 0, 0, 0], outcome=[1.0, 0.0, 1.0, 1.0], step_offsets=[0, 1, 2, 3, 4], tree=[0, 0, 1, 1])
    inter = grpo(two).trajectory
    intra = torch.tensor([0.5, -0.5, 0.0, 0.0]) / (math.sqrt(0.5) + 1e-6)  # tree 0: {1, 0}; tree 1 constant
    assert torch.allclose(tree_grpo(two).trajectory, inter + intra)


def test_tree_grpo_prefix_sum_equals_duplicated_training():
    r = one_tree()
    dup = tree_grpo(r)
    summed = tree_grpo(r, prefix="sum")
    a = dup.trajectory
    # node a: all leaves; node b: L0+L1; leaf-only nodes: their own leaf
    want = torch.stack([a.sum(), a[0] + a[1], a[0], a.sum(), a[0] + a[1], a[1], a.sum(), a[2], a[2]])
    assert torch.allclose(summed.per_step(r), want)
    # the token-level gradient on duplicated prefixes sums per node exactly this
    node_total = {}
    for s, state in enumerate(r.state.tolist()):
        node_total[state] = node_total.get(state, 0.0) + float(dup.per_step(r)[s])
    for s, state in enumerate(r.state.tolist()):
        assert float(summed.per_step(r)[s]) == pytest.approx(node_total[state], abs=1e-6)


def test_tree_grpo_chain_reduction():
    r = Rollouts(group=[0, 0, 0, 1], outcome=[1.0, 0.0, 0.0, 1.0], step_offsets=[0, 2, 3, 5, 6])
    assert torch.equal(tree_grpo(r, intra_singleton="zero").trajectory, grpo(r).trajectory)
    # as released: a singleton tree keeps mean 0 / std 1, adding R / (1 + eps)
    assert torch.allclose(tree_grpo(r).trajectory, grpo(r).trajectory + r.outcome / (1 + 1e-6))


def test_treerl_node_rewards():
    r = one_tree()
    v = {"root": 1 / 3, "a": 1 / 3, "b": 0.5, "c": 1.0, "d": 0.0, "e": 0.0, "f": 0.0}
    leaves = {"a": 3, "b": 2, "c": 1, "d": 1, "e": 1, "f": 1}
    parent = {"a": "root", "b": "a", "c": "b", "d": "b", "e": "a", "f": "e"}

    def reward(n):
        return ((v[n] - v["root"]) + (v[n] - v[parent[n]])) / math.sqrt(leaves[n])

    order = ["a", "b", "c", "a", "b", "d", "a", "e", "f"]
    got = treerl(r).per_step(r)
    assert got.tolist() == pytest.approx([reward(n) for n in order], abs=1e-6)
    raw = treerl(r, divide_by_leaves=False).per_step(r)
    assert raw[1].item() == pytest.approx(2 * (0.5 - 1 / 3))


def test_treerl_chain_reduction_is_dr_grpo_first_step_twice():
    r = Rollouts(group=[0, 0, 0], outcome=[1.0, 0.0, 0.0], step_offsets=[0, 2, 4, 5])
    dr = grpo(r, norm="mean").trajectory
    assert treerl(r).per_step(r).tolist() == pytest.approx(
        [float(x) for x in (2 * dr[0], dr[0], 2 * dr[1], dr[1], 2 * dr[2])]
    )


def test_treepo_subgroups():
    r = one_tree()
    # L0: root group (mean 1/3) and node b (leaves L0, L1: mean 1/2); node a = root's leaves, counted once
    want = torch.tensor([((1 - 1 / 3) + (1 - 0.5)) / 2, ((0 - 1 / 3) + (0 - 0.5)) / 2, (0 - 1 / 3)])
    assert torch.allclose(treepo(r, whiten=False).trajectory, want)
    assert torch.allclose(treepo(r).trajectory, _whiten(want))


def _whiten(x):
    mean = x.double().sum() / (len(x) + 1e-8)
    var = ((x.double() - mean) ** 2).sum() / (len(x) + 1e-8) * len(x) / (len(x) - 1)
    return ((x.double() - mean) / torch.sqrt(var + 1e-8)).float()


def test_treepo_chain_reduction():
    r = Rollouts(group=[0, 0, 0, 1, 1], outcome=[1.0, 0.0, 0.0, 1.0, 0.5], step_offsets=[0, 2, 3, 5, 6, 8])
    assert torch.allclose(treepo(r, whiten=False).trajectory, grpo(r, norm="mean").trajectory)
    assert torch.allclose(treepo(r).trajectory, reinforce_pp_baseline(r).trajectory)


def test_bad_arguments():
    r = one_tree()
    with pytest.raises(ValueError, match="prefix"):
        tree_grpo(r, prefix="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weighting"):
        treepo(r, weighting="steps")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(8))
def test_tree_estimators_match_loop_oracles_on_random_trees(seed):
    from stepcredit.envs.synthetic import make_tree_rollouts
    from tests.support.estimator_oracles import tree_grpo_loop, treepo_loop, treerl_loop

    r = make_tree_rollouts(6, trees_per_task=1 + seed % 3, leaves_per_tree=2 + seed % 4, depth=4, seed=seed)
    assert torch.allclose(tree_grpo(r).trajectory, tree_grpo_loop(r), atol=1e-5)
    assert torch.allclose(treerl(r).per_step(r), treerl_loop(r), atol=1e-5)
    assert torch.allclose(treepo(r, whiten=False).trajectory, treepo_loop(r, whiten=False), atol=1e-6)
    assert torch.allclose(treepo(r).trajectory, treepo_loop(r), atol=1e-5)
