"""Audit metrics on tiny hand-made batches with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.auditing import auroc, blame_rate
from stepcredit.auditing import metrics as M
from stepcredit.core.credit import Credit
from stepcredit.estimators import grpo


def labelled(credit_per_step, labels, outcome, steps, group):
    offsets = [0]
    for k in steps:
        offsets.append(offsets[-1] + k)
    r = Rollouts(group=group, outcome=outcome, step_offsets=offsets, label=labels)
    c = Credit(torch.zeros(len(outcome)), step=torch.tensor(credit_per_step, dtype=torch.float32))
    return r, c


def test_headline_by_hand():
    # failed t0: +1 (−0.5), +1 (0.2), −1 (−1); failed t1: +1 (0.1), −1 (0.3); success t2: −1 (0.4), +1 (1)
    r, c = labelled(
        [-0.5, 0.2, -1.0, 0.1, 0.3, 0.4, 1.0], [1, 1, -1, 1, -1, -1, 1], [0.0, 0.0, 1.0], [3, 2, 2], [0, 0, 1]
    )
    u = M.units(r, c)
    assert u.kind == "step"
    got = {k: float(v[0]) for k, v in M.headline(u, torch.ones(1, 7, dtype=torch.float64)).items()}
    assert got["blame"] == pytest.approx(1 / 3)  # one of the three +1 in failures is < 0
    assert got["false_praise"] == pytest.approx(1.0)  # the −1 in the success is > 0
    assert got["bsa_failed"] == pytest.approx(0.5 * (2 / 3 + 1 / 2))
    assert got["bsa_all"] == pytest.approx(0.5 * (3 / 4 + 1 / 3))
    # failed: +1 {−0.5, 0.2, 0.1} vs −1 {−1, 0.3}: wins (−.5>−1), (.2>−1), (.1>−1) → 3 of 6
    assert got["auroc_failed"] == pytest.approx(3 / 6)
    # all: +1 {−.5, .2, .1, 1} vs −1 {−1, .3, .4}: 4 + 1 + 1 + 3 wins? −.5>−1; .2>−1; .1>−1; 1>all three
    assert got["auroc_all"] == pytest.approx((1 + 1 + 1 + 3) / 12)
    b = blame_rate(r, c)
    assert (b["n"], b["blamed"]) == (3, 1) and b["mean_credit"] == pytest.approx((-0.5 + 0.2 + 0.1) / 3)
    assert M.balanced_sign_accuracy(r, c) == pytest.approx(got["bsa_failed"])


def test_bsa_is_not_raised_by_a_constant_shift_and_needs_signs():
    r, c = labelled(
        [-0.5, 0.2, -1.0, 0.1, 0.3, 0.4, 1.0], [1, 1, -1, 1, -1, -1, 1], [0.0, 0.0, 1.0], [3, 2, 2], [0, 0, 1]
    )
    # a shift that makes every credit one sign gets exactly half: one class all right, the other all wrong
    for shift in (-100.0, 100.0):
        assert M.balanced_sign_accuracy(r, Credit(c.trajectory + shift, step=c.step)) == pytest.approx(0.5)
    perfect = Credit(torch.zeros(3), step=torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0]))
    assert M.balanced_sign_accuracy(r, perfect) == 1.0
    assert M.balanced_sign_accuracy(r, Credit(torch.zeros(3))) == 0.0  # all zero: no sign is right


def test_auroc_ties_and_empty_class():
    assert auroc(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, False])) == pytest.approx(0.75)
    assert math.isnan(auroc(torch.tensor([1.0]), torch.tensor([True])))


def test_weighted_auroc_equals_repeated_rows():
    torch.manual_seed(0)
    scores = torch.randn(20).round(decimals=1)
    labels = torch.randint(0, 2, (20,)).bool()
    w = torch.randint(0, 4, (20,))
    rep = torch.repeat_interleave(torch.arange(20), w)
    want = auroc(scores[rep], labels[rep])
    got = M.weighted_auroc(scores, labels, ~labels, w.double()[None, :])
    assert got[0].item() == pytest.approx(want)


def test_call_units_take_call_labels_and_per_call_credit():
    r = Rollouts(
        group=[0, 0],
        outcome=[0.0, 1.0],
        step_offsets=[0, 1, 2],
        kind=[1, 1],
        call_offsets=[0, 2, 3],
        call_ok=[1, 1, 1],
        call_label=[1, -1, 1],
    )
    c = Credit(torch.tensor([-1.0, 1.0]), call=torch.tensor([2.0, 0.0, 0.0]))
    u = M.units(r, c)
    assert u.kind == "call" and u.credit.tolist() == [1.0, -1.0, 1.0]
    assert u.failed.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="labels"):
        M.units(Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1]), Credit(torch.zeros(1)))


def test_mean_table_density_and_length_skew():
    r, c = labelled([1.0, 0.0, -2.0, 0.0, 4.0], [1, 0, -1, 1, 0], [0.0, 1.0], [3, 2], [0, 0])
    table = M.mean_credit_table(M.units(r, c))
    assert table["+1"]["failure"] == {"n": 1, "mean": 1.0}
    assert table["-1"]["failure"]["mean"] == -2.0 and table["+1"]["success"]["n"] == 1
    assert math.isnan(table["-1"]["success"]["mean"])
    dens = M.signal_density(r, c)
    assert dens["steps_nonzero"] == pytest.approx(3 / 5) and dens["zero_variance_groups"] == 0.0
    skew = M.length_skew(r, c, buckets=(1, 3))
    assert skew[0]["steps"] == "1–2" and skew[0]["credit_share"] == pytest.approx(4 / 7)
    assert skew[1]["steps"] == "3+" and skew[1]["trajectory_share"] == 0.5


def test_bootstrap_is_seeded_and_brackets_the_point():
    r, c = labelled(
        [-0.5, 0.2, -1.0, 0.1, 0.3, 0.4, 1.0, -0.2],
        [1, 1, -1, 1, -1, -1, 1, 1],
        [0.0, 0.0, 1.0, 0.0],
        [3, 2, 2, 1],
        [0, 1, 2, 3],
    )
    u = M.units(r, c)
    a = M.bootstrap_intervals(u, 4, samples=500, seed=3)
    b = M.bootstrap_intervals(u, 4, samples=500, seed=3)
    assert a == b
    point = float(M.headline(u, torch.ones(1, 8, dtype=torch.float64))["blame"][0])
    assert a["blame"][0] <= point <= a["blame"][1]
    assert all(math.isnan(x) for x in M.bootstrap_intervals(u, 4, samples=0)["blame"])


@pytest.mark.realdata
def test_grpo_blames_every_correct_call_of_mixed_groups(tau2_rollouts):
    from stepcredit.selection import binary_gate

    mixed = tau2_rollouts.select(binary_gate(tau2_rollouts))
    b = blame_rate(mixed, grpo(mixed))
    assert b["n"] > 100 and b["rate"] == 1.0  # by construction: a failed run's every token gets A < 0
    whole = blame_rate(tau2_rollouts, grpo(tau2_rollouts))
    assert whole["rate"] < 1.0  # all-fail groups give 0 instead


def test_audit_reports_calibration_only_when_confidence_is_stated(tmp_path):
    from stepcredit.auditing.report import write_report
    from stepcredit.auditing.run import audit
    from stepcredit.envs.synthetic import make_rollouts

    r = make_rollouts(4, 4, seed=0)
    assert audit(r, ["grpo"], bootstrap=0).calibration is None
    conf = torch.where(r.outcome > 0, torch.tensor(0.9), torch.tensor(0.3))
    from dataclasses import replace

    result = audit(replace(r, confidence=conf), ["grpo"], bootstrap=0)
    assert result.calibration["stated"] == r.num_trajectories and result.calibration["auroc"] == 1.0
    assert "Calibration of stated confidence" in write_report(result, tmp_path / "r.html").read_text()
