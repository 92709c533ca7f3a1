"""GRPO-RoC: quotas with floors, uniform negatives, low-penalty positives (rStar2-Agent roc.py)."""

from __future__ import annotations

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.core import Texts
from stepcredit.selection import resample_on_correct
from stepcredit.selection.roc import answer_format_penalty, tool_error_penalty


def oversampled(outcomes, call_ok_per_traj):
    """One step per trajectory holding the given calls."""
    n = len(outcomes)
    calls = [len(c) for c in call_ok_per_traj]
    flat = [x for c in call_ok_per_traj for x in c]
    offsets = [0]
    for k in calls:
        offsets.append(offsets[-1] + k)
    return Rollouts(
        group=[0] * n,
        outcome=outcomes,
        step_offsets=list(range(n + 1)),
        kind=[1 if k else 2 for k in calls],
        call_offsets=offsets,
        call_ok=flat,
        texts=Texts.create(n, 1, n, len(flat), call_name=["f"] * len(flat), call_arguments=["{}"] * len(flat)),
    )


def test_penalties():
    r = oversampled([1.0, 1.0, 1.0], [[1, 0], [], [1, 1, 1]])
    assert tool_error_penalty(r).tolist() == [0.5, 0.5, 0.0]
    texts = Texts.create(3, 1, 3, 0, action=["<answer>1</answer>", "<answer>1</answer><answer>2</answer>", "none"])
    t = Rollouts(group=[0, 0, 0], outcome=[1.0, 1.0, 1.0], step_offsets=[0, 1, 2, 3], texts=texts)
    assert answer_format_penalty(t).tolist() == [0.0, 1.0, 1.0]  # 2 answers in 1 turn: min(1/1, 1)


def test_quotas_and_positive_ranking_by_hand():
    # 12 rollouts → keep 6: 4 positives, 8 negatives → p = round(4·6/12) = 2, z = 4
    oks = [[1, 1], [0, 0], [1, 0], [], [1] * 3, [0], [1], [1], [0], [1], [1], [1]]
    outcome = [1.0, 1.0, 1.0, 1.0] + [0.0] * 8
    r = oversampled(outcome, oks)
    keep = resample_on_correct(r, keep=6)
    pos = [i for i in keep.tolist() if outcome[i] > 0]
    neg = [i for i in keep.tolist() if outcome[i] <= 0]
    # penalties of the positives: 0, 1, .5, .5 → the two cleanest: 0 and one of the .5s (batch order: 2)
    assert pos == [0, 2]
    assert len(neg) == 4 and set(neg) <= set(range(4, 12))
    assert torch.equal(keep, resample_on_correct(r, keep=6))  # seeded
    negatives = {tuple(sorted(set(resample_on_correct(r, keep=6, seed=s).tolist()) - {0, 2})) for s in range(20)}
    assert len(negatives) > 1  # the negatives are a random subset: seeds pick different ones


def test_floors_and_small_groups():
    # 10 rollouts, 1 positive → keep 4: p = round(0.4) = 0 → raised to min(2, 1) = 1, z = 3
    r = oversampled([1.0] + [0.0] * 9, [[1]] * 10)
    keep = resample_on_correct(r, keep=4)
    assert len(keep) == 4 and 0 in keep.tolist()
    # group smaller than keep: dropped; equal to keep: kept whole
    assert resample_on_correct(r, keep=11).numel() == 0
    assert resample_on_correct(r, keep=10).tolist() == list(range(10))
    # all-equal group: dropped
    same = oversampled([0.0] * 10, [[1]] * 10)
    assert resample_on_correct(same, keep=4).numel() == 0
    assert resample_on_correct(same, keep=4, drop_equal=False).numel() == 4


def test_both_quotas_under_floor_keeps_whole_group():
    # 5 rollouts, keep 4, floors 3/3... need floors summing <= keep: use 2/2 with 1 pos, 4 neg → p=round(.8)=1,
    # z=round(3.2)=3: not both under. Use 6 rollouts, 3/3, keep 3 → z = round(1.5)=2, p=round(1.5)=2 → …
    r = oversampled([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [[1]] * 6)
    keep = resample_on_correct(r, keep=3, min_negatives=2, min_positives=1)
    # z = round(1.5) = 2, p = round(1.5) = 2 (half to even): z <= min(2, 3) → z = 2, p = 1
    outcome = r.outcome[keep]
    assert int((outcome > 0).sum()) == 1 and int((outcome <= 0).sum()) == 2
    r2 = oversampled([1.0, 0.0, 0.0, 0.0, 0.0], [[1]] * 5)
    # keep 3 of 5 with floors 2/1: z = round(2.4) = 2, p = round(0.6) = 1 → 3
    assert resample_on_correct(r2, keep=3, min_negatives=2, min_positives=1).numel() == 3


def test_weighted_mode_prefers_low_penalty():
    oks = [[1]] * 2 + [[0]] * 2 + [[1]] * 8  # positives 0, 1 clean; 2, 3 all errors
    outcome = [1.0, 1.0, 1.0, 1.0] + [0.0] * 8
    r = oversampled(outcome, oks)
    clean = 0
    for seed in range(200):
        keep = resample_on_correct(r, keep=6, mode="weighted", temperature=0.25, seed=seed).tolist()
        clean += sum(1 for i in keep if i in (0, 1))
    assert clean / (2 * 200) > 0.9  # the clean successes are nearly always among the 2 kept positives


def test_bad_arguments():
    r = oversampled([1.0, 0.0], [[1], [1]])
    for kwargs, fragment in (
        (dict(keep=0), "keep"),
        (dict(keep=2, min_negatives=2, min_positives=1), "min_negatives"),
        (dict(mode="random"), "mode"),
        (dict(temperature=0.0), "temperature"),
        (dict(format_penalty="xml"), "format_penalty"),
    ):
        with pytest.raises(ValueError, match=fragment):
            resample_on_correct(r, **kwargs)
