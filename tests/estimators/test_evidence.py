"""call_evidence: grounding by hand, the repeated-mistake case call_consensus gets wrong, centring,
and the rates EM fits on batches from the systematic policy."""

from __future__ import annotations

import torch
from hypothesis import given, settings

from stepcredit import CallRecord, Recipe, StepRecord, TrajectoryRecord, build
from stepcredit.core import Rollouts, segments
from stepcredit.estimators import call_consensus, call_evidence, grpo
from stepcredit.estimators.evidence import evidence_rates, grounded_calls
from stepcredit.estimators.tool import call_keys
from tests.support.batches import structured


def _traj(tid, group, outcome, calls, prompt="Customer user id: u7. Order o3 please.", results=None):
    steps = [
        StepRecord(f"step {k}", calls=[CallRecord(n, a, (results or {}).get((n, a), "ok"))])
        for k, (n, a) in enumerate(calls)
    ]
    steps.append(StepRecord("done"))
    return TrajectoryRecord(id=tid, group=group, outcome=outcome, steps=steps, prompt=prompt)


def test_grounding_by_hand():
    r = build([
        _traj("t0", "g", 0.0, [("get_user", '{"id":"u7"}'), ("get_order", '{"id":"O3"}'), ("refund", '{"amount":17}')]),
        _traj("t1", "g", 0.0, [("get_user", '{"id":"u8"}'), ("lookup", '{"x":7}'), ("note", '{"flag":true,"y":null}')]),
        _traj("t2", "g", 0.0, [("get_user", "not json"), ("get_order", '{"id":"o3","n":3.0}')]),
    ], states="distinct")
    # u7, O3 (case-insensitive) are in the prompt; 17 is not (numbers match whole digit runs: "u7" holds
    # 7, not 17); u8 is not; 7 is; booleans and null ground themselves; text that is not JSON never does;
    # 3.0 is the 3 of "o3"
    assert grounded_calls(r).tolist() == [True, True, False, False, True, True, False, True]


def test_a_tool_result_grounds_later_calls():
    results = {("find", '{"name":"ann"}'): '{"id": "p42", "price": 12.5}'}
    r = build([_traj("t0", "g", 1.0, [("find", '{"name":"ann"}'), ("get", '{"id":"p42","price":12.5}')],
                     prompt="find Ann", results=results)], states="distinct")
    assert grounded_calls(r).tolist() == [True, True]


def repeated_mistake_batch():
    """One task, 8 runs: 2 succeed with [read, write_ok]; 5 fail repeating the same wrong write; 1 fails
    with a different wrong write. The repeated mistake is what fixed-rate consensus calls correct."""
    read, ok, bad, other = ("get", '{"id":"u7"}'), ("write", '{"v":"u7"}'), ("write", '{"v":"o3"}'), ("write", '{}')
    runs = [_traj(f"s{i}", "g", 1.0, [read, ok]) for i in range(2)]
    runs += [_traj(f"f{i}", "g", 0.0, [read, bad]) for i in range(5)]
    runs += [_traj("f5", "g", 0.0, [read, other])]
    return build(runs, states="distinct")


def test_a_repeated_mistake_is_blamed_where_consensus_praises_it():
    r = repeated_mistake_batch()
    calls = [(n, a) for n, a in zip(r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist(), strict=True)]
    bad = torch.tensor([c == ("write", '{"v":"o3"}') for c in calls])
    read = torch.tensor([c == ("get", '{"id":"u7"}') for c in calls])
    good = torch.tensor([c == ("write", '{"v":"u7"}') for c in calls])
    fixed = call_consensus(r).per_call(r)
    fitted = call_evidence(r).per_call(r)
    assert bool((fixed[bad] > 0).all())  # five failed witnesses outvote two successful ones
    assert bool((fitted[bad] < 0).all())
    assert bool((fitted[good] > 0).all()) and float(fitted[read].min()) > float(fitted[bad].max())
    # centred within the task: the call credit sums to zero over the task's calls
    assert abs(float(fitted.sum())) < 1e-4


def test_centring_and_the_outcome_part():
    r = repeated_mistake_batch()
    c = call_evidence(r)
    torch.testing.assert_close(c.trajectory, grpo(r, norm="mean").trajectory)
    raw = call_evidence(r, center="none").per_call(r)
    assert bool((raw > c.per_call(r)).all())  # uncentred, every call carries the task's mean belief


@settings(max_examples=60, deadline=None)
@given(structured(tokens=False))
def test_call_credit_sums_to_zero_in_every_task(r):
    """Over the first occurrence of each call in its run (repeats are credited against the baseline,
    not counted in it); with ``repeats="together"`` over every call."""
    keys, _ = call_keys(r, "effect")
    seen: set[tuple[int, int]] = set()
    first = []
    for key, traj in zip(keys.tolist(), r.call_traj.tolist(), strict=True):
        first.append((key, traj) not in seen)
        seen.add((key, traj))
    task = r.group[r.call_traj]
    every = torch.ones(r.num_calls, dtype=torch.bool)
    for per_call, counted in ((call_evidence(r).per_call(r), torch.tensor(first, dtype=torch.bool)),
                              (call_evidence(r, repeats="together").per_call(r), every)):
        sums = segments.segment_sum(per_call.double() * counted, task, r.num_groups)
        assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-4)


def test_without_calls_it_is_grpo():
    r = build([TrajectoryRecord(id=f"t{i}", group="g", outcome=float(i % 2), steps=[StepRecord("x")])
               for i in range(4)], states="distinct")
    torch.testing.assert_close(call_evidence(r).per_step(r), grpo(r, norm="mean").per_step(r))


def test_em_learns_that_this_policy_repeats_its_mistakes():
    """On the systematic policy's calculator runs (a repeated misconception per decision point), the
    fitted rates say failed runs make a given wrong call at least as often as a given correct one —
    what fixed rates (0.1 vs 0.5) deny — and successes keep the correct calls."""
    from stepcredit.envs import env_factory
    from stepcredit.generation import rollout_chains
    from stepcredit.generation.scripted import SystematicOracle

    batch = rollout_chains(env_factory("calculator", split="train"), SystematicOracle(0.3, seed=3), range(24),
                           group_size=8, seed=3).rollouts
    rates = evidence_rates(batch)
    assert rates["wf"] > 0.3 and rates["cs"] > 0.6
    assert Recipe.load("call_evidence").run(batch).credit.call is not None


def test_combine_add_keeps_the_outcome_advantage_on_calls():
    r = repeated_mistake_batch()
    added, replaced = call_evidence(r, combine="add"), call_evidence(r)
    outcome = grpo(r, norm="mean").trajectory[r.call_traj]
    torch.testing.assert_close(added.per_call(r), replaced.per_call(r) + outcome)
    torch.testing.assert_close(added.trajectory, replaced.trajectory)


def test_tasks_mixed_leaves_tasks_without_contrast_to_the_outcome():
    r = repeated_mistake_batch()
    extra = build([_traj(f"x{i}", "h", 0.0, [("get", '{"id":"u7"}'), ("write", '{"v":"o3"}')]) for i in range(3)],
                  states="distinct")
    both = Rollouts.concat([r, extra])
    mixed_only = call_evidence(both, tasks="mixed").per_call(both)
    everywhere = call_evidence(both).per_call(both)
    in_h = both.group[both.call_traj] == 1
    assert bool((mixed_only[in_h] == 0).all())  # all-fail task: GRPO's 0
    torch.testing.assert_close(mixed_only[~in_h], everywhere[~in_h])


def test_no_success_baseline_batch():
    """Tasks without a success: their outcome advantage is R − the batch's mean R (not GRPO's 0), so a
    failed run's non-call steps are pushed down; mixed tasks keep the group baseline."""
    r = repeated_mistake_batch()
    all_fail = build([_traj(f"x{i}", "x", 0.0, [("get", '{"id":"u7"}')]) for i in range(3)], states="distinct")
    both = Rollouts.concat([r, all_fail])
    group = call_evidence(both).trajectory
    batch = call_evidence(both, no_success_baseline="batch").trajectory
    mean = float(both.outcome.mean())
    in_x = both.group == both.num_groups - 1
    assert bool((group[in_x] == 0).all())
    torch.testing.assert_close(batch[in_x], torch.full((3,), -mean, dtype=batch.dtype))
    torch.testing.assert_close(batch[~in_x], group[~in_x])


def test_a_repeated_call_is_a_call_of_its_own():
    """Two runs succeed booking once; four fail, each booking the same flight twice (the duplicate
    dooms them). With ``repeats="apart"`` the second booking is another call that no success made;
    ``"together"`` gives both bookings the one credit of the call the successes witness."""
    read, book = ("get", '{"id":"u7"}'), ("book", '{"user":"u7","flight":"o3"}')
    runs = [_traj(f"s{i}", "g", 1.0, [read, book]) for i in range(2)]
    runs += [_traj(f"f{i}", "g", 0.0, [read, book, book]) for i in range(4)]
    r = build(runs, states="distinct")
    second = torch.tensor([False, False] * 2 + [False, False, True] * 4)
    first = torch.tensor([False, True] * 2 + [False, True, False] * 4)
    apart, together = call_evidence(r).per_call(r), call_evidence(r, repeats="together").per_call(r)
    # every first-time call is as sure as the read (the task's baseline); the repeat falls below it
    assert float(apart[~second].abs().max()) < 1e-3 and bool((apart[second] < -0.5).all())
    torch.testing.assert_close(together[second], together[first][2:])  # one subject per run and call
    assert bool((apart[second] < together[second]).all())  # together, the duplicate is not blamed
    assert abs(float(apart[~second].sum())) < 1e-4  # centred over first occurrences; the repeat is extra
    assert evidence_rates(r, repeats="together") == evidence_rates(r)  # fitted on first occurrences


def test_a_loop_of_repeats_moves_no_other_call():
    """A failed run stuck calling ``transfer`` over and over: with repeats apart, how many times it
    repeats changes neither the other calls' credit — in its task and in a task scored by the context
    classifier — nor the fitted rates (with repeats together, the repeats weigh in the task's
    baseline)."""
    read, ok, bad, loop = ("get", '{"id":"u7"}'), ("write", '{"v":"u7"}'), ("write", '{"v":"o3"}'), ("transfer", "{}")

    def batch(n: int) -> Rollouts:
        runs = [_traj(f"s{i}", "g", 1.0, [read, ok]) for i in range(3)]
        runs += [_traj(f"f{i}", "g", 0.0, [read, bad]) for i in range(3)]
        runs += [_traj("loop", "g", 0.0, [read, *[loop] * n])]
        # a task every run failed: scored by the context classifier, trained on task g
        runs += [_traj(f"h{i}", "h", 0.0, [read, ok if i % 2 else bad]) for i in range(4)]
        return build(runs, states="distinct")

    once, often = batch(1), batch(40)
    loop_at = 13  # the loop run's first transfer
    for repeats, same in (("apart", True), ("together", False)):
        a = call_evidence(once, repeats=repeats).per_call(once)
        b = call_evidence(often, repeats=repeats).per_call(often)
        assert torch.allclose(a[: loop_at + 1], b[: loop_at + 1]) is same
        if repeats == "apart":  # the classifier trains on first occurrences only
            torch.testing.assert_close(a[loop_at + 1 :], b[loop_at + 40 :])  # task h
    c = call_evidence(often).per_call(often)
    assert bool((c[loop_at + 1 : loop_at + 40] < 0).all())  # the repeats are pushed down
    assert evidence_rates(once) == evidence_rates(often)
