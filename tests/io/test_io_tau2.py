"""The real tau2-bench airline logs (skipped when ../shared/data is absent) and the labelling rule."""

from __future__ import annotations

import json

import pytest
import torch

from stepcredit import RolloutError
from stepcredit.core import CallRecord, StepRecord, TrajectoryRecord, summarize
from stepcredit.io import label_calls, load, parse_tau2

pytestmark = pytest.mark.realdata


def test_counts(tau2_rollouts):
    s = summarize(tau2_rollouts)
    assert (s["trajectories"], s["groups"], s["successes"]) == (279, 50, 162)
    assert tau2_rollouts.num_calls == 2832
    assert s["tool_errors"] == 24


def test_labels_match_the_published_counts(tau2_rollouts):
    r = tau2_rollouts
    failed = r.outcome[r.step_traj[r.call_step]] < 1
    assert int(((r.call_label == 1) & failed).sum()) == 286
    assert int(((r.call_label == -1) & failed).sum()) == 194
    # wrong writes are rare in successful trajectories (~1%)
    assert int(((r.call_label == -1) & ~failed).sum()) < 10


def test_parallel_calls_and_repeated_ids_pair(tau2_rollouts):
    r = tau2_rollouts
    assert int((r.calls_per_step > 1).sum()) == 401
    assert torch.equal(r.kind[r.calls_per_step > 0], torch.ones(int((r.calls_per_step > 0).sum()), dtype=torch.int8))


def test_without_labels(tau2_dir):
    files = sorted(tau2_dir.glob("*.json"))[-1:]
    r = load(files, labels=False)
    assert r.call_label is None and r.label is None


def ref(name, **args):
    return {"action_id": "x", "requestor": "assistant", "name": name, "arguments": args, "compare_args": None}


def trajectory(*calls):
    return TrajectoryRecord(id="t", group="g", outcome=0.0, steps=[StepRecord(action="", calls=list(calls))])


def test_labelling_rule_by_hand():
    rec = trajectory(
        CallRecord("get_user_details", json.dumps({"user_id": "u"}), ok=1),  # read: 0
        CallRecord("cancel_reservation", json.dumps({"reservation_id": "A"}), ok=1),  # matches: +1
        CallRecord("cancel_reservation", json.dumps({"reservation_id": "A"}), ok=1),  # pool used up: -1
        CallRecord("cancel_reservation", json.dumps({"reservation_id": "B"}), ok=0),  # errored write: 0
        CallRecord("book_reservation", json.dumps({"x": 1, "y": 2}), ok=1),  # compare_args x only: +1
        CallRecord("transfer_to_human_agents", "{}", ok=1),  # no transfer in reference: 0
    )
    label_calls(
        rec,
        [ref("cancel_reservation", reservation_id="A"), dict(ref("book_reservation", x=1, y=9), compare_args=["x"])],
    )
    assert [c.label for c in rec.steps[0].calls] == [0, 1, -1, 0, 1, 0]
    assert rec.steps[0].label == -1


def test_transfer_counts_when_reference_has_one():
    rec = trajectory(CallRecord("transfer_to_human_agents", '{"summary": "any"}', ok=1))
    label_calls(rec, [ref("transfer_to_human_agents", summary="other")])
    assert rec.steps[0].calls[0].label == 1 and rec.steps[0].label == 1


def test_user_side_reference_actions_are_not_matched():
    rec = trajectory(CallRecord("cancel_reservation", '{"reservation_id": "A"}', ok=1))
    label_calls(rec, [dict(ref("cancel_reservation", reservation_id="A"), requestor="user")])
    assert rec.steps[0].calls[0].label == -1


def sim(**overrides):
    s = {
        "id": "s1",
        "task_id": "0",
        "reward_info": {"reward": 1.0},
        "messages": [{"role": "assistant", "content": "hi"}],
    }
    s.update(overrides)
    return s


def test_malformed_tau2():
    with pytest.raises(RolloutError, match="simulations"):
        parse_tau2({"tasks": []}, "f.json")
    with pytest.raises(RolloutError, match="task objects"):
        parse_tau2({"simulations": [], "tasks": [{"no_id": 1}]}, "f.json")
    with pytest.raises(RolloutError, match="not among the file's tasks") as info:
        parse_tau2({"simulations": [sim(task_id="9")], "tasks": [{"id": "0"}]}, "f.json")
    assert info.value.trajectory == "s1"
    with pytest.raises(RolloutError, match=r"reward_info\.reward"):
        parse_tau2({"simulations": [sim(reward_info={})], "tasks": [{"id": "0"}]}, "f.json")
    recs = parse_tau2({"simulations": [sim()], "tasks": [{"id": "0", "evaluation_criteria": None}]}, "f.json")
    assert recs[0].outcome == 1.0
