"""The audit's breakdown: units without the calls every run of a task made, and by group type."""

from __future__ import annotations

import json
import subprocess
import sys

from stepcredit import CallRecord, StepRecord, TrajectoryRecord, build
from stepcredit.auditing import audit
from stepcredit.auditing import metrics as M
from stepcredit.core.credit import Credit


def _traj(tid, group, outcome, calls):  # type: ignore[no-untyped-def]
    steps = [StepRecord("s", calls=[CallRecord(n, "{}", label=lab)]) for n, lab in calls] + [StepRecord("end")]
    return TrajectoryRecord(id=tid, group=group, outcome=outcome, steps=steps)


def batch():  # type: ignore[no-untyped-def]
    return build([
        # g0, mixed: "read" made by all three runs (always-made), "write" by two, "bad" by one
        _traj("a", "g0", 1.0, [("read", 1), ("write", 1)]),
        _traj("b", "g0", 0.0, [("read", 1), ("write", 1)]),
        _traj("c", "g0", 0.0, [("read", 1), ("bad", -1)]),
        # g1, all fail
        _traj("d", "g1", 0.0, [("read", 1), ("bad", -1)]),
        _traj("e", "g1", 0.0, [("read", 1)]),
        # g2, all succeed; g3: a group of one (every call always-made)
        _traj("f", "g2", 1.0, [("read", 1)]),
        _traj("g", "g2", 1.0, [("read", 1), ("write", 1)]),
        _traj("h", "g3", 0.0, [("write", 1)]),
    ], states="distinct")


def test_always_made_calls_and_group_types():
    r = batch()
    names = r.texts.call_name.to_pylist()
    always = M.always_made(r, "call").tolist()
    assert [n for n, a in zip(names, always, strict=True) if a] == ["read"] * 7 + ["write"]
    u = M.units(r, Credit.zeros(r))
    subsets = M.unit_subsets(r, u)
    group_of = r.group[r.call_traj]
    assert subsets["mixed"].tolist() == (group_of == 0).tolist()
    assert subsets["all_fail"].tolist() == ((group_of == 1) | (group_of == 3)).tolist()
    assert subsets["all_success"].tolist() == (group_of == 2).tolist()
    assert bool((subsets["mixed"] | subsets["all_fail"] | subsets["all_success"]).all())


def test_always_made_reads_calls_by_effect():
    """Two orders of the same sum (same tool, same values, same result) count as one call every run
    made; the same values in another tool, or with another result, do not."""
    def run(tid, args, result):  # type: ignore[no-untyped-def]
        return TrajectoryRecord(id=tid, group="g", outcome=0.0, steps=[
            StepRecord("s", calls=[CallRecord("add", args, result, label=1)]), StepRecord("end")])
    r = build([run("a", '{"a":4,"b":18}', "22"), run("b", '{"a":18,"b":4}', "22")], states="distinct")
    assert M.always_made(r, "call").tolist() == [True, True]
    r = build([run("a", '{"a":4,"b":18}', "22"), run("b", '{"a":18,"b":4}', "-14")], states="distinct")
    assert M.always_made(r, "call").tolist() == [False, False]


def test_step_units_use_action_texts():
    r = build([TrajectoryRecord(id=str(i), group="g", outcome=float(i), steps=[
        StepRecord("look", label=1), StepRecord(f"answer {i}", label=1 if i else -1)]) for i in range(2)],
        states="distinct")
    assert M.always_made(r, "step").tolist() == [True, False, True, False]


def test_breakdown_in_the_audit_and_its_json():
    r = batch()
    result = audit(r, ["grpo", "call_consensus"], bootstrap=50)
    for a in result.recipes:
        assert set(a.breakdown) == set(M.SUBSETS)
        counts = {k: v["units"] for k, v in a.breakdown.items()}
        assert counts["mixed"] + counts["all_fail"] + counts["all_success"] == r.num_calls
        assert counts["without_always_made"] == r.num_calls - 8
    grpo = result.recipes[0].breakdown
    assert grpo["all_fail"]["metrics"]["auroc_failed"] == 0.5  # outcome-only credit: all ties in all-fail groups
    data = result.to_dict()
    json.dumps(data)  # serialisable
    assert data["recipes"]["call_consensus"]["breakdown"]["without_always_made"]["units"] == r.num_calls - 8


def test_cli_breakdown_table(tmp_path):
    from stepcredit.io import write_parquet

    path = tmp_path / "b.parquet"
    write_parquet(batch(), path)
    res = subprocess.run([sys.executable, "-m", "stepcredit.cli", "audit", str(path), "--recipes", "grpo",
                          "--bootstrap", "20", "--breakdown", "--markdown", "-o", str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "| grpo | all-fail groups | 4 |" in res.stdout and "without always-made" in res.stdout
