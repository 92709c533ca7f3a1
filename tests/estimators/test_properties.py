"""Invariants every estimator keeps: finite credit, exactly 0 on masked tokens, permutation
equivariance, and the reduction to GRPO when the structure is trivial. Plus the mission's case: a
correct call shared by a failed and a successful trajectory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit import Rollouts
from stepcredit.core import Texts, segments
from stepcredit.estimators import (
    action_anchor,
    call_consensus,
    call_evidence,
    gigpo,
    grpo,
    ms_grpo,
    mt_grpo,
    per_turn,
    per_turn_index,
    reinforce_pp_baseline,
    rloo,
    toolpo,
    tree_grpo,
    treepo,
    treerl,
)
from tests.support.batches import structured

ESTIMATORS = {
    "grpo": grpo,
    "rloo": rloo,
    "reinforce_pp_baseline": reinforce_pp_baseline,
    "ms_grpo": ms_grpo,
    "gigpo": gigpo,
    "gigpo_std": lambda r: gigpo(r, mode="mean_std_norm", episode_weighting="trajectories"),
    "tree_grpo": tree_grpo,
    "tree_grpo_sum": lambda r: tree_grpo(r, prefix="sum"),
    "treerl": treerl,
    "treepo": treepo,
    "mt_grpo": mt_grpo,
    "mt_grpo_index": lambda r: mt_grpo(r, turns="per_index"),
    "mt_grpo_traj": lambda r: mt_grpo(r, turns="per_trajectory", turn_reward="tool_ok"),
    "toolpo": toolpo,
    "action_anchor": action_anchor,
    "action_anchor_std": lambda r: action_anchor(r, norm="std"),
    "call_consensus": call_consensus,
    "call_evidence": call_evidence,
    "per_turn": per_turn,
    "per_turn_zero": lambda r: per_turn(r, singleton="zero"),
    "per_turn_index": per_turn_index,
    "call_evidence_uncentred": lambda r: call_evidence(r, center="none", failure_witnesses=False),
}


@settings(max_examples=60, deadline=None)
@given(structured())
def test_finite_and_masked_tokens_exactly_zero(r):
    for name, est in ESTIMATORS.items():
        credit = est(r).check(r, name)
        tokens = credit.to_tokens(r)
        assert torch.isfinite(tokens).all(), name
        assert torch.equal(tokens[~r.response_mask], torch.zeros(int((~r.response_mask).sum()))), name
        # step values sit on every token of the step span, call values on call spans
        per_step = credit.per_step(r)
        for sidx in range(r.num_steps):
            i, a = int(r.step_traj[sidx]), int(r.step_token_start[sidx])
            assert tokens[i, a].item() == pytest.approx(per_step[sidx].item(), rel=1e-5, abs=1e-5), name


@settings(max_examples=60, deadline=None)
@given(structured(tokens=False, huge=True))
def test_finite_on_huge_outcomes(r):
    for name, est in ESTIMATORS.items():
        credit = est(r).check(r, name)  # check raises on non-finite components
        assert torch.isfinite(credit.per_step(r)).all() and torch.isfinite(credit.per_call(r)).all(), name


@settings(max_examples=60, deadline=None)
@given(structured(), st.randoms(use_true_random=False))
def test_permutation_equivariance(r, rnd):
    perm = list(range(r.num_trajectories))
    rnd.shuffle(perm)
    shuffled = r.select(perm)
    idx = torch.tensor(perm)
    steps = segments.ranges(r.step_offsets[idx], r.steps_per_trajectory[idx])
    calls = segments.ranges(r.call_offsets[steps], r.calls_per_step[steps])
    for name, est in ESTIMATORS.items():
        a, b = est(r), est(shuffled)
        assert torch.allclose(a.per_step(r)[steps], b.per_step(shuffled), atol=1e-5), name
        assert torch.allclose(a.per_call(r)[calls], b.per_call(shuffled), atol=1e-5), name


@settings(max_examples=60, deadline=None)
@given(structured(tokens=False))
def test_trivial_structure_reduces_to_grpo(r):
    """One leaf per tree, all states distinct, no tool calls, no intermediate rewards."""
    s = r.num_steps
    trivial = Rollouts(
        group=r.group,
        outcome=r.outcome,
        step_offsets=r.step_offsets,
        texts=Texts.create(r.num_trajectories, r.num_groups, s, 0),
    )
    g_std, g_mean = grpo(trivial).per_step(trivial), grpo(trivial, norm="mean").per_step(trivial)
    assert torch.equal(gigpo(trivial, episode_weighting="trajectories").per_step(trivial), g_mean)
    assert torch.equal(gigpo(trivial, mode="mean_std_norm", episode_weighting="trajectories").per_step(trivial), g_std)
    assert torch.allclose(tree_grpo(trivial, intra_singleton="zero").per_step(trivial), g_std)
    assert torch.allclose(tree_grpo(trivial, intra_singleton="zero", prefix="sum").per_step(trivial), g_std)
    assert torch.allclose(treepo(trivial, whiten=False).per_step(trivial), g_mean, atol=1e-6)
    assert torch.allclose(treepo(trivial).trajectory, reinforce_pp_baseline(trivial).trajectory, atol=1e-5)
    for turns in ("first", "per_index", "per_trajectory"):
        assert torch.equal(mt_grpo(trivial, turns=turns).per_step(trivial), g_std)
    assert torch.equal(toolpo(trivial).per_step(trivial), g_mean)
    assert torch.equal(action_anchor(trivial).per_step(trivial), g_mean)
    assert torch.equal(call_consensus(trivial).per_step(trivial), g_mean)
    assert torch.equal(ms_grpo(trivial).per_step(trivial), g_std)
    # TreeRL on chains: Dr.GRPO on every step, twice on a trajectory's first step
    first = torch.zeros(s, dtype=torch.bool)
    first[trivial.step_offsets[:-1][trivial.steps_per_trajectory > 0]] = True
    # (a task with one trajectory has V(root) = its outcome, so TreeRL gives it 0, not Dr.GRPO's raw R)
    lone = (torch.bincount(trivial.group, minlength=trivial.num_groups) == 1)[trivial.step_group]
    want = torch.where(lone, torch.zeros_like(g_mean), torch.where(first, 2 * g_mean, g_mean))
    assert torch.allclose(treerl(trivial).per_step(trivial), want, atol=1e-6)


def shared_call_batch():
    """One task, four trajectories. The correct call X (from the task's first decision point) is made
    by t0, which succeeds, and by t1, which fails later without any penalty. t2 and t3 make the wrong
    write W instead and are penalised (step reward −1, as an environment with dense rewards gives).

        t0: X → answer            R=1     t1: X → answer        R=0
        t2: W(−1) → answer        R=0     t3: W(−1) → answer    R=0
    States: every first step shares node/state 1; X-after states are shared (node 2) by t0 and t1.
    One rollout tree: t0/t1 branch after X; t2/t3 after W."""
    return Rollouts(
        group=[0, 0, 0, 0],
        outcome=[1.0, 0.0, 0.0, 0.0],
        step_offsets=[0, 2, 4, 6, 8],
        kind=[1, 2, 1, 2, 1, 2, 1, 2],
        reward=[0, 0, 0, 0, -1.0, 0, -1.0, 0],
        state=[1, 2, 1, 2, 1, 4, 1, 5],
        tree=[0, 0, 0, 0],
        call_offsets=[0, 1, 1, 2, 2, 3, 3, 4, 4],
        call_ok=[1, 1, 1, 1],
        texts=Texts.create(4, 1, 8, 4, call_name=["X", "X", "W", "W"], call_arguments=["{}"] * 4),
    )


def test_correct_call_in_failed_trajectory_is_not_blamed():
    r = shared_call_batch()
    x_in_failed = 1  # call index of X in t1
    assert grpo(r).per_call(r)[x_in_failed] < 0
    assert action_anchor(r).per_call(r)[x_in_failed] >= 0
    assert gigpo(r).per_call(r)[x_in_failed] >= 0
    assert call_consensus(r).per_call(r)[x_in_failed] > 0
    # Tree-GRPO: X's node is shared by t0 and t1 — its credit is the sum of both leaves' advantages
    r_tree = Rollouts(**{**_cols(r), "state": [1, 2, 1, 3, 4, 5, 4, 6]})  # node of X = 1, shared by t0, t1
    assert tree_grpo(r_tree, prefix="sum").per_call(r_tree)[x_in_failed] >= 0


def _cols(r):
    from dataclasses import fields

    return {f.name: getattr(r, f.name) for f in fields(r)}
