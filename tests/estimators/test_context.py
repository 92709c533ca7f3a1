"""call_evidence's context clue: the features by hand, the classifier, and an all-fail task whose
repeated mistake only the context gives away."""

from __future__ import annotations

import torch

from stepcredit import CallRecord, StepRecord, TrajectoryRecord, build
from stepcredit.estimators import call_evidence
from stepcredit.estimators._context import _call_features, context_features, fit_logistic


def test_features_by_hand():
    text = "compute (6 + 14) - (2 - 8)."
    feats = _call_features("mul", '{"a": 6, "b": 14}', False, text, 24)
    assert feats[0] == "T|mul"
    # the tokens next to each value, and what stands between the two values
    assert {"R|mul|a|+", "L|mul|a|(", "L|mul|b|+", "R|mul|b|)", "M|mul|+"} <= set(feats)
    assert "B|mul|b|-" in feats  # the bag around a value reaches the next parenthesis
    # numbers match whole: 6 is not in 16 or 6.5; a value never seen is flagged by parameter
    assert "U|add|a" in _call_features("add", '{"a": 6}', False, "16 + 6.5", 24)
    assert "U|add|a" not in _call_features("add", '{"a": 6.0}', False, "take 6 apples", 24)
    # nested parameters by path (list positions dropped), strings case-insensitive
    nested = _call_features("book", '{"trip": {"legs": ["SFO", "lax"]}}', True, "from sfo to LAX".casefold(), 8)
    assert {"E|book", "L|book|trip.legs|from", "R|book|trip.legs|to"} <= set(nested)
    # values nested past any reading are unseen; a sentence's full stop does not hide a number
    deep = '{"x": ' + "[" * 40 + "1" + "]" * 40 + "}"
    assert "U|f|x" in _call_features("f", deep, False, "1", 8)
    assert "U|f|x" not in _call_features("f", '{"x": 450}', False, "costing at most $450.", 8)
    # arguments that are not JSON, non-finite numbers
    assert _call_features("f", "not json", False, "x", 8) == ["T|f", "X|f"]
    assert "U|f|x" in _call_features("f", '{"x": Infinity}', False, "infinity", 8)


def test_fit_logistic_learns_and_is_deterministic():
    # calls with feature 3 are positives, with feature 5 negatives; feature 7 is noise on all
    feats = [[3, 7], [5, 7], [3], [5], [3, 7], [5, 7], [3], [5]]
    flat = torch.tensor([f for fs in feats for f in fs])
    offsets = torch.tensor([0, *torch.tensor([len(fs) for fs in feats]).cumsum(0)[:-1].tolist()])
    target = torch.tensor([1.0, 0.0] * 4)
    train = torch.tensor([True] * 4 + [False] * 4)
    z = fit_logistic(flat, offsets, train, target)
    assert bool((z[0::2] > 0).all()) and bool((z[1::2] < 0).all())
    assert torch.equal(z, fit_logistic(flat, offsets, train, target))
    # no training rows: every logit is the (zero) bias
    assert torch.equal(fit_logistic(flat, offsets, torch.zeros(8, dtype=torch.bool), target), torch.zeros(8))


def _run(tid, group, outcome, prompt, calls):
    steps = [StepRecord(f"call {k}", calls=[CallRecord(n, a, res)]) for k, (n, a, res) in enumerate(calls)]
    return TrajectoryRecord(id=tid, group=group, outcome=outcome, prompt=prompt, steps=[*steps, StepRecord("answer")])


def _call(op, a, b):
    value = {"add": a + b, "mul": a * b}[op]
    return op, f'{{"a":{a},"b":{b}}}', str(value)


def operator_batch():
    """Tasks ``(a + b) * (c + d)``. In the mixed tasks the successes compute both sums and the product;
    the failures take the product of a and b instead of their sum (the same mistake in every failed
    run). In the last task every run fails the same way: both its add and its mul are made by all
    runs, grounded, without errors — only the ``+`` between 3 and 4 says the mul is wrong."""
    runs = []
    tasks = [(2, 5, 7, 3), (4, 9, 6, 2), (8, 3, 5, 5), (6, 6, 2, 9), (7, 4, 3, 8), (5, 8, 9, 4)]
    for t, (a, b, c, d) in enumerate(tasks):
        prompt = f"Compute ({a} + {b}) * ({c} + {d})."
        good = [_call("add", a, b), _call("add", c, d), _call("mul", a + b, c + d)]
        bad = [_call("mul", a, b), _call("add", c, d), _call("mul", a * b, c + d)]
        runs += [_run(f"t{t}s{i}", f"t{t}", 1.0, prompt, good) for i in range(3)]
        runs += [_run(f"t{t}f{i}", f"t{t}", 0.0, prompt, bad) for i in range(3)]
    return build(runs + all_fail_runs(), states="distinct")


def all_fail_runs():
    prompt = "Compute (3 + 4) * (2 + 6)."
    bad = [_call("add", 2, 6), _call("mul", 3, 4), _call("mul", 12, 8)]
    return [_run(f"xf{i}", "x", 0.0, prompt, bad) for i in range(6)]


def test_context_separates_a_repeated_mistake_in_an_all_fail_task():
    r = operator_batch()
    in_x = r.group[r.call_traj] == r.num_groups - 1
    names, args = r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist()
    correct = torch.tensor([n == "add" and a == '{"a":2,"b":6}' for n, a in zip(names, args, strict=True)]) & in_x
    wrong = torch.tensor([n == "mul" and a == '{"a":3,"b":4}' for n, a in zip(names, args, strict=True)]) & in_x
    with_context = call_evidence(r).per_call(r)
    assert bool((with_context[correct] > 0).all()) and bool((with_context[wrong] < 0).all())
    # the counting clues alone cannot tell the two apart
    counting = call_evidence(r, context=False).per_call(r)
    torch.testing.assert_close(counting[correct], counting[wrong])


def test_without_a_mixed_task_the_counting_clues_stay():
    r = build(all_fail_runs(), states="distinct")
    torch.testing.assert_close(call_evidence(r).per_call(r), call_evidence(r, context=False).per_call(r))


def test_context_features_follow_the_calls():
    r = operator_batch()
    flat, offsets = context_features(r)
    assert offsets.numel() == r.num_calls and int(offsets[0]) == 0
    assert bool((torch.diff(offsets) > 0).all()) and int(flat.max()) < 1 << 16
