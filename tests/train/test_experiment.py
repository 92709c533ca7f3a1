"""The experiment runner: summary arithmetic by hand, config checks, and one tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepcredit.train.experiment import load_experiment, rollouts_to_reach, summarize_runs
from tests.support.train import TINY


def history(successes: list[float], per_step: float = 100.0) -> list[dict[str, Any]]:
    return [{"step": i, "rollouts": i * per_step, "tokens": i * per_step * 10, "eval_success": s,
             "time_generate": 1.0, "time_credit": 0.01, "time_update": 1.0} for i, s in enumerate(successes)]


def test_summary_by_hand() -> None:
    exp = load_experiment({"train": {}, "runs": [{"recipe": "grpo"}, {"recipe": "gigpo"}, {"recipe": "oracle"}]})
    histories = {
        "grpo": [history([0.2, 0.3, 0.4, 0.5, 0.6, 0.6])],  # final = mean of the last two = 0.6
        "gigpo": [history([0.2, 0.4, 0.6, 0.6, 0.6, 0.6])],
        "oracle": [history([0.2, 0.6, 0.7, 0.8, 0.8, 0.8])],
    }
    s = summarize_runs(exp, histories)
    assert s["target_final"] == pytest.approx(0.6) and s["target_mid"] == pytest.approx(0.4)
    runs = s["runs"]
    assert runs["grpo"]["rollouts_to_final"]["mean"] == 400
    assert runs["gigpo"]["rollouts_to_final"]["mean"] == 200
    assert runs["oracle"]["rollouts_to_final"]["mean"] == 100
    assert runs["gigpo"]["gap_closed"] == pytest.approx((400 - 200) / (400 - 100))
    assert runs["oracle"]["gap_closed"] == pytest.approx(1.0) and runs["grpo"]["gap_closed"] == pytest.approx(0.0)
    assert runs["gigpo"]["rollouts_to_mid"]["mean"] == 100
    assert runs["grpo"]["collapsed"] == 0.0
    assert runs["grpo"]["credit_share"] == pytest.approx(0.01 / 2.01)
    assert rollouts_to_reach(history([0.1, 0.2]), 0.5) == math.inf


def test_collapse_is_ending_below_the_warm_start() -> None:
    exp = load_experiment({"train": {}, "runs": [{"recipe": "grpo"}]})
    s = summarize_runs(exp, {"grpo": [history([0.3, 0.5, 0.1, 0.0]), history([0.3, 0.4, 0.5, 0.5])]})
    assert s["runs"]["grpo"]["collapsed"] == 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"train": {}, "runs": []}, "non-empty list of runs"),
        ({"train": {"lr": 1e-3, "colour": 1}, "runs": [{"recipe": "grpo"}]}, "unknown key"),
        ({"train": {}, "runs": [{"recipe": "grpo"}, {"recipe": "grpo"}]}, "unique"),
        ({"train": {}, "runs": [{"name": "x"}]}, "at least a recipe"),
        ({"train": {}, "runs": [{"recipe": "no_such_recipe"}]}, "no_such_recipe"),
        ({"train": {"steps": -2}, "runs": [{"recipe": "grpo"}]}, "steps"),
    ],
)
def test_bad_experiments_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exp = load_experiment(spec)
        from stepcredit.recipe import Recipe

        for run in exp.runs:
            Recipe.load(run.recipe)


def test_the_default_experiment_loads() -> None:
    exp = load_experiment(None)
    names = [r.name for r in exp.runs]
    assert names[0] == "grpo" and "oracle" in names and len(names) >= 5
    assert any(r.rollout == "trees" for r in exp.runs)


def test_a_tiny_experiment_end_to_end(tmp_path: Path) -> None:
    spec = {
        "name": "tiny",
        "seeds": [0],
        "train": {**TINY, "steps": 2},
        "runs": [{"name": "grpo", "recipe": "grpo"}, {"name": "trees", "recipe": "tree_grpo", "rollout": "trees",
                                                       "tree": [1, 1, 1]}, {"name": "oracle", "recipe": "oracle"}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "stepcredit.cli", "experiment", str(path), "--out", str(tmp_path),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "tiny"
    for name in ("curves.png", "summary.json", "summary.md", "report.html", "audit.json"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"grpo", "trees", "oracle"}
    assert "| grpo |" in done.stdout
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    assert (out / "grpo-seed0" / "last_rollouts.parquet").is_file()
    # --resume: finished runs are read back, not retrained, and no warm start is paid for them
    began = time.monotonic()
    again = subprocess.run([sys.executable, "-m", "stepcredit.cli", "experiment", str(path), "--out", str(tmp_path),
                            "--quiet", "--resume"], capture_output=True, text=True, timeout=300)
    took = time.monotonic() - began
    assert again.returncode == 0, again.stderr
    assert "warm start" not in again.stderr and "grpo seed 0" in again.stderr
    resumed = json.loads((out / "summary.json").read_text())
    assert 0 <= resumed["seconds"] <= took  # the invocation's own duration (not a clock reading)
    assert {k: v["final_success"] for k, v in resumed["runs"].items()} == {
        k: v["final_success"] for k, v in summary["runs"].items()}


def test_runs_share_a_warm_start_unless_it_differs() -> None:
    from stepcredit.train import TrainConfig
    from stepcredit.train.experiment import warm_key

    base = TrainConfig()
    assert warm_key(base) == warm_key(dataclasses.replace(base, recipe="gigpo", lr=3e-3, critique={}, opd={}))
    assert warm_key(base) != warm_key(dataclasses.replace(base, skills={}))
    assert warm_key(base) != warm_key(dataclasses.replace(base, sft_feedback=8))
    assert warm_key(base) != warm_key(dataclasses.replace(base, seed=1))
