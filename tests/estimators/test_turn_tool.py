"""MT-GRPO, ToolPO and action-anchored credit: hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.core import Texts
from stepcredit.estimators import action_anchor, grpo, mt_grpo, toolpo

SQ = math.sqrt


def turns_batch():
    """Task 0: three trajectories.
    t0: call(r=1) → call(r=0) → answer        R=1
    t1: think → call(r=0) → answer            R=0
    t2: answer                                R=0"""
    return Rollouts(
        group=[0, 0, 0],
        outcome=[1.0, 0.0, 0.0],
        step_offsets=[0, 3, 6, 7],
        kind=[1, 1, 2, 0, 1, 2, 2],
        reward=[1.0, 0, 0, 0, 0, 0, 0],
        call_offsets=[0, 1, 2, 2, 2, 3, 3, 3],
        call_ok=[1, 0, 1],
    )


def norm(x):
    x = torch.tensor(x)
    return (x - x.mean()) / (x.std() + 1e-6)


def test_mt_grpo_first_turn():
    r = turns_batch()
    a_o = norm([1.0, 0.0, 0.0])
    a_t = norm([1.0, 0.0, 0.0])  # first tool turn's reward: t0 1, t1 0, t2 none → 0
    want = [a_o[0] + a_t[0], a_o[0], a_o[0], a_o[1] + a_t[1], a_o[1] + a_t[1], a_o[1], a_o[2] + a_t[2]]
    assert torch.allclose(mt_grpo(r).per_step(r), torch.stack(want))
    half = mt_grpo(r, turn_coef=0.5).per_step(r)
    assert half[0].item() == pytest.approx((a_o[0] + 0.5 * a_t[0]).item())


def test_mt_grpo_tool_ok_reward():
    r = turns_batch()
    a_t = norm([1.0, 1.0, 0.0])  # first calls ran fine in t0 and t1
    assert mt_grpo(r, turn_reward="tool_ok").step[[0, 3, 4, 6]].tolist() == pytest.approx(
        [a_t[0].item(), a_t[1].item(), a_t[1].item(), a_t[2].item()], abs=1e-6
    )


def test_mt_grpo_per_index_and_per_trajectory():
    r = turns_batch()
    # per_index: turn 1 = {t0: 1, t1: 0} (t2 never called a tool); turn 2 = {t0: 0} alone → raw 0
    step = mt_grpo(r, turns="per_index").step
    t1 = norm([1.0, 0.0])
    assert step.tolist() == pytest.approx([t1[0].item(), 0.0, 0.0, t1[1].item(), t1[1].item(), 0.0, 0.0], abs=1e-6)
    # per_trajectory: mean turn reward t0 0.5, t1 0, t2 0 → every step up to the last call
    a = norm([0.5, 0.0, 0.0])
    got = mt_grpo(r, turns="per_trajectory").step
    assert got.tolist() == pytest.approx([float(x) for x in (a[0], a[0], 0.0, a[1], a[1], 0.0, a[2])], abs=1e-6)


def test_mt_grpo_without_calls_is_grpo():
    r = Rollouts(group=[0, 0, 1], outcome=[1.0, 0.0, 1.0], step_offsets=[0, 2, 3, 4])
    for turns in ("first", "per_index", "per_trajectory"):
        assert torch.equal(mt_grpo(r, turns=turns).per_step(r), grpo(r).per_step(r))


def test_toolpo_by_hand():
    r = turns_batch()
    credit = toolpo(r)
    succ = torch.tensor([2 / 3, -1 / 3, -1 / 3])
    action = torch.tensor([1.0, 1.0, 0.0]) - 2 / 3  # correct (tool_ok) calls: t0 1, t1 1, t2 0
    assert torch.allclose(credit.trajectory, succ)
    assert torch.allclose(  # the hand sums round in float32; the estimator's group statistics are float64
        credit.per_call(r), torch.stack([succ[0] + action[0], succ[0] + action[0], succ[1] + action[1]]), atol=1e-6
    )
    assert torch.allclose(toolpo(r, action_weight=2.0).call, 2 * action[[0, 0, 1]])


def good_if_args_mention_a(name: str, arguments: str, result: str) -> bool:
    return "a" in arguments


def test_toolpo_verifier_callable_and_import_string():
    texts = Texts.create(3, 1, 7, 3, call_arguments=['{"a":1}', '{"b":1}', '{"b":2}'])
    r = Rollouts(**{**_cols(turns_batch()), "texts": texts})
    by_fn = toolpo(r, correct=good_if_args_mention_a)
    by_name = toolpo(r, correct=f"{__name__}:good_if_args_mention_a")
    action = torch.tensor([1.0, 0.0, 0.0]) - 1 / 3
    assert torch.allclose(by_fn.call, action[[0, 0, 1]]) and torch.equal(by_fn.call, by_name.call)
    with pytest.raises(ValueError, match="module:function"):
        toolpo(r, correct="labels")


def _cols(r):
    from dataclasses import fields

    return {f.name: getattr(r, f.name) for f in fields(r)}


def anchor_batch():
    """Task 0: X made by t0 (R=1) and t1 (R=0); W only by t2 (R=0); t3 (R=0) made X twice and Y."""
    names = ["X", "X", "W", "X", "X", "Y"]
    return Rollouts(
        group=[0, 0, 0, 0],
        outcome=[1.0, 0.0, 0.0, 0.0],
        step_offsets=[0, 1, 2, 3, 5],
        kind=[1, 1, 1, 1, 1],
        call_offsets=[0, 1, 2, 3, 5, 6],
        call_ok=[1] * 6,
        texts=Texts.create(4, 1, 5, 6, call_name=names, call_arguments=["{}"] * 6),
    )


def test_action_anchor_by_hand():
    r = anchor_batch()
    v = 0.25
    adv = r.outcome - v
    credit = action_anchor(r)
    # X: trajectories {t0, t1, t3}. For t1: others t0 (1), t3 (0) → n=2, Q=0.5, w=2/3
    x_t1 = 2 / 3 * (0.5 - v) + 1 / 3 * adv[1]
    # for t0: others t1, t3 → Q=0; for t3: others t0, t1 → Q=0.5
    x_t0 = 2 / 3 * (0.0 - v) + 1 / 3 * adv[0]
    x_t3 = 2 / 3 * (0.5 - v) + 1 / 3 * adv[3]
    # W and Y: no other trajectory → w=0 → the trajectory advantage
    want = torch.tensor([x_t0, x_t1, adv[2], x_t3, x_t3, adv[3]])
    assert torch.allclose(credit.per_call(r), want)
    # t3's first step has two calls (X, X): the step gets their mean
    assert credit.per_step(r)[3].item() == pytest.approx(x_t3.item())
    without = action_anchor(r, leave_one_out=False)
    # without leave-one-out t0's own success enters Q(X) = 1/3 over 3 trajectories, w = 3/4
    assert without.per_call(r)[0].item() == pytest.approx(3 / 4 * (1 / 3 - v) + 1 / 4 * adv[0].item())
    strong = action_anchor(r, prior_strength=0.0)
    assert strong.per_call(r)[1].item() == pytest.approx(0.5 - v)


def test_action_anchor_std_norm_and_bad_args():
    r = anchor_batch()
    s = r.outcome.std().item() + 1e-6
    credit = action_anchor(r, norm="std", prior_strength=0.0)
    assert credit.per_call(r)[1].item() == pytest.approx((0.5 - 0.25) / s, rel=1e-5)
    with pytest.raises(ValueError, match="norm"):
        action_anchor(r, norm="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prior_strength"):
        action_anchor(r, prior_strength=-1)


def consensus_batch():
    """Task 0: X made by t0 (success) and t1 (fail); W only by t1; Y by t1 and t2 (both fail).
    Task 1 (all fail): Z made by t3 and t4; V only by t4."""
    names = ["X", "X", "W", "Y", "Y", "Z", "Z", "V"]
    return Rollouts(
        group=[0, 0, 0, 1, 1],
        outcome=[1.0, 0.0, 0.0, 0.0, 0.0],
        step_offsets=[0, 1, 3, 4, 5, 7],
        kind=[1, 1, 1, 1, 1, 1, 1],
        call_offsets=[0, 1, 2, 4, 5, 6, 7, 8],
        call_ok=[1] * 8,
        texts=Texts.create(5, 2, 7, 8, call_name=names, call_arguments=["{}"] * 8),
    )


def test_call_consensus_by_hand():
    from stepcredit.estimators import call_consensus

    r = consensus_batch()
    s_has, s_lacks = math.log(0.9 / 0.05), math.log(0.1 / 0.95)
    f_has, f_lacks = math.log(0.5 / 0.1), math.log(0.5 / 0.9)
    v = lambda logit: math.tanh(logit / 2)  # noqa: E731
    want = [
        v(f_has + f_lacks),  # t0's X: failure t1 has it, failure t2 lacks it
        v(s_has + f_lacks),  # t1's X: success t0 has it, failure t2 lacks it
        v(s_lacks + f_lacks),  # t1's W: nobody else
        v(s_lacks + f_has),  # t1's Y: t0 lacks, t2 has
        v(s_lacks + f_has),  # t2's Y: t0 lacks, t1 has
        v(f_has),  # t3's Z: t4 has
        v(f_has),  # t4's Z
        v(f_lacks),  # t4's V: t3 lacks
    ]
    credit = call_consensus(r)
    assert credit.per_call(r).tolist() == pytest.approx(want, abs=1e-6)
    # the correct call X in the failed t1 is credited, the idiosyncratic W is not
    assert credit.per_call(r)[1] > 0 > credit.per_call(r)[2]
    # all-fail task 1: grpo gives exactly 0, consensus still separates Z from V
    assert grpo(r).per_call(r)[5:].tolist() == [0.0, 0.0, 0.0]
    assert credit.per_call(r)[5] > 0 > credit.per_call(r)[7]
    # a tool-call step gets the mean of its calls; a lone task's calls get tanh(logit(prior)/2) = 0
    assert credit.per_step(r)[2].item() == pytest.approx((want[2] + want[3]) / 2, abs=1e-6)
    lone = Rollouts(
        group=[0],
        outcome=[0.0],
        step_offsets=[0, 1],
        kind=[1],
        call_offsets=[0, 1],
        call_ok=[1],
        texts=Texts.create(1, 1, 1, 1, call_name=["X"], call_arguments=["{}"]),
    )
    assert call_consensus(lone).per_call(lone).tolist() == [0.0]
    with pytest.raises(ValueError, match=r"success_has_wrong must be a finite number in \(0, 1\)"):
        call_consensus(r, success_has_wrong=0.0)
