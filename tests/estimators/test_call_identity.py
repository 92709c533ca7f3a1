"""Call identity: exact arguments, or the call's effect (same tool, same argument values, same result)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from stepcredit import CallRecord, StepRecord, TrajectoryRecord, build
from stepcredit.estimators import call_evidence
from stepcredit.estimators.tool import call_keys
from tests.support.batches import structured


def _traj(tid, group, outcome, calls):
    steps = [StepRecord(f"step {k}", calls=[CallRecord(n, a, res)]) for k, (n, a, res) in enumerate(calls)]
    return TrajectoryRecord(id=tid, group=group, outcome=outcome, steps=[*steps, StepRecord("answer")],
                            prompt="Compute (4 + 18) - (2 - 8).")


def _partition(keys):
    """The classes as a set of frozensets of call positions, whatever the ids."""
    out: dict[int, set[int]] = {}
    for i, k in enumerate(keys.tolist()):
        out.setdefault(k, set()).add(i)
    return {frozenset(v) for v in out.values()}


def test_effect_identity_by_hand():
    r = build([
        _traj("t0", "g", 1.0, [("add", '{"a":4,"b":18}', "22"), ("sub", '{"a":2,"b":8}', "-6")]),
        _traj("t1", "g", 0.0, [("add", '{"a":18,"b":4}', "22"), ("sub", '{"a":8,"b":2}', "6")]),
        # same arguments, another result (a fresh id per booking): still the same call
        _traj("t2", "g", 0.0, [("add", '{"a":18,"b":4}', "res ABC"), ("mul", '{"a":4,"b":18}', "72")]),
        # another task: never the same call as the first task's
        _traj("t3", "h", 1.0, [("add", '{"a":4,"b":18}', "22"), ("book", '{"x":{"y":[1,"z"]}}', "ok")]),
        _traj("t4", "h", 0.0, [("add", "not json", "22"), ("book", '{"w":["z",1]}', "ok")]),
    ], states="distinct")
    exact, k_exact = call_keys(r)
    effect, k_effect = call_keys(r, "effect")
    assert k_exact == 9 and k_effect == 7
    assert _partition(exact) == {frozenset(s) for s in ([0], [2, 4], [1], [3], [5], [6], [8], [7], [9])}
    # add(4,18) ~ add(18,4) (same values, same result 22) ~ add(18,4) with another result (same
    # arguments); sub(2,8) and sub(8,2) differ in their results; mul is another tool; nested values are
    # compared as a multiset; text that is not JSON stands for itself
    assert _partition(effect) == {frozenset(s) for s in ([0, 2, 4], [1], [3], [5], [6], [7, 9], [8])}


def test_identity_is_validated():
    r = build([_traj("t0", "g", 1.0, [("add", '{"a":1,"b":2}', "3")])], states="distinct")
    with pytest.raises(ValueError, match="identity must be"):
        call_keys(r, "names")  # type: ignore[arg-type]


def test_a_commuted_call_keeps_its_credit():
    """The successes computed add(4,18); a failed run computed add(18,4) (correct, another order) and
    then a wrong sub. By arguments the commuted call is one no success made (blamed); by effect it is
    the successes' call."""
    ok = [("add", '{"a":4,"b":18}', "22"), ("sub", '{"a":2,"b":8}', "-6")]
    commuted = [("add", '{"a":18,"b":4}', "22"), ("sub", '{"a":2,"b":9}', "-7")]
    wrong = [("mul", '{"a":4,"b":18}', "72"), ("sub", '{"a":2,"b":8}', "-6")]
    runs = [_traj(f"s{i}", "g", 1.0, ok) for i in range(3)]
    runs += [_traj(f"c{i}", "g", 0.0, commuted) for i in range(2)]
    runs += [_traj(f"w{i}", "g", 0.0, wrong) for i in range(3)]
    r = build(runs, states="distinct")
    commuted_add = torch.tensor([n == "add" and a == '{"a":18,"b":4}' for n, a in
                                 zip(r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist(), strict=True)])
    assert bool((call_evidence(r, identity="arguments").per_call(r)[commuted_add] < 0).all())
    assert bool((call_evidence(r).per_call(r)[commuted_add] > 0).all())


@settings(max_examples=40, deadline=None)
@given(structured(tokens=False))
def test_effect_classes_are_unions_of_exact_classes_within_a_group(r):
    exact, _ = call_keys(r)
    effect, _ = call_keys(r, "effect")
    group = r.group[r.call_traj]
    for k in exact.unique().tolist():
        members = exact == k
        assert effect[members].unique().numel() == 1  # an exact class is never split
    for k in effect.unique().tolist():
        assert group[effect == k].unique().numel() == 1  # a class never spans two tasks
