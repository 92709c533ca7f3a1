"""Smoke tests of the benchmark suite: ``bench_estimators.py --quick`` and ``bench_trainer_path.py``
run and report every method (marked ``slow``: ``make test-slow``, not ``make test``), and ``suite.py``
assembles ``RESULTS.md`` from captured outputs (no wall-clock assertions)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _suite():
    spec = importlib.util.spec_from_file_location("bench_suite", BENCHMARKS / "suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.verl
@pytest.mark.skipif(importlib.util.find_spec("verl") is None, reason="verl is not installed")
def test_bench_estimators_quick_reports_every_method(tmp_path: Path) -> None:
    out, plot = tmp_path / "est.json", tmp_path / "scaling.png"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_estimators.py"), "--quick", "--json", str(out), "--plot", str(plot)],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a timing assertion
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    floor = {(r["B"], r["T"]): r["median_ms"] for r in rows if r["method"] == "floor"}
    assert set(floor) == {tuple(s) for s in data["sizes"]}  # the floor at every size
    for name in data["methods"]:
        assert any(r["method"] == name for r in rows), f"no figure for {name}"
    for r in rows:  # every ratio is to the floor of its own size
        assert math.isfinite(r["median_ms"]) and r["median_ms"] >= 0, r
        if floor[(r["B"], r["T"])] > 0:
            assert r["x_floor"] == pytest.approx(r["median_ms"] / floor[(r["B"], r["T"])]), r
    expected = {"floor", "verl loop", "verl vectorized", "full recipe", "gigpo oracle (loop, steps)"}
    assert expected <= set(data["methods"])

    import stepcredit.estimators  # noqa: F401  (registers every credit component)
    from stepcredit.core.registry import REGISTRY

    for name in REGISTRY["credit"]:  # every estimator is benched or skipped with a reason
        assert name in data["methods"] or data["skipped"].get(name), name
    assert plot.stat().st_size > 0
    assert "| method | batch |" in proc.stdout  # the Markdown table on stdout


@pytest.mark.slow
def test_bench_trainer_path_small_reports_every_target(tmp_path: Path) -> None:
    out = tmp_path / "path.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_trainer_path.py"), "--no-peak", "--size", "256", "512",
         "--json", str(out)],
        cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=600,  # a hang guard
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["batch"] for r in rows} == {"single-turn", "multi-turn"}
    floor = {r["batch"]: r["ms"] for r in rows if r["method"] == "floor"}
    for r in rows:
        assert (r["met"] is None) == (r["target"] is None), r  # a target is always judged
        if floor[r["batch"]] > 0:
            assert r["x_floor"] == pytest.approx(r["ms"] / floor[r["batch"]]), r
    assert any(r["method"].startswith("trainer path: grpo") and r["target"] == 2.0 for r in rows)
    assert "| batch | method |" in proc.stdout


def test_suite_assembly_headings_and_failures() -> None:
    suite = _suite()
    results = [
        suite.BenchResult("grpo", ".venv/bin/python benchmarks/bench_grpo.py", 0, "| a | b |\n|---|---|\n| 1 | 2 |\n",
                          "progress\n", 12.0),
        suite.BenchResult("estimators", ".venv/bin/python benchmarks/bench_estimators.py", 0, "| m |\n|---|\n",
                          "", 30.0),
        suite.BenchResult("structural", ".venv/bin/python benchmarks/bench_structural.py", 3, "partial line\n",
                          "".join(f"line {k}\n" for k in range(100)) + "AssertionError: boom\n", 5.0),
        suite.BenchResult("stream", ".venv/bin/python benchmarks/bench_stream.py", None),
        suite.BenchResult("load", ".venv/bin/python benchmarks/bench_load.py", 0, "stage   ms\nfloor  1.0\n"),
    ]
    info = {"cpu": "Test CPU", "cores": "2", "memory": "24 GiB", "python": "3.11", "torch": "2.x", "verl": "0.9.1",
            "ray": "2.x"}
    text = suite.assemble(results, info, total_seconds=90, date="2026-01-01 00:00 UTC")

    assert text.startswith("# Benchmark results\n")
    assert "`make bench`" in text and "2026-01-01" in text and "1.5 min" in text
    assert "Test CPU, 2 cores, 24 GiB memory" in text and "verl 0.9.1" in text
    for r in results:
        assert f"## {suite.BY_NAME[r.name].title}\n" in text
        assert f"Command: `{r.command}`" in text
    # sections in the order given, the captured tables verbatim, the estimators' plot embedded
    heads = [text.index(f"## {suite.BY_NAME[r.name].title}") for r in results]
    assert heads == sorted(heads)
    assert "| 1 | 2 |" in text and "progress" not in text
    assert "![scaling](scaling.png)" in text
    # the failed bench is flagged, at the top and in its section, with the tail of its stderr
    assert "**Failed: structural**" in text
    assert "| [structural](#" in text and "FAILED (exit 3)" in text
    failed = text[text.index(f"## {suite.BY_NAME['structural'].title}"):]
    failed = failed[: failed.index("## ", 3)]
    assert "**FAILED** (exit code 3" in failed and "AssertionError: boom" in failed and "partial line" in failed
    assert "line 99" in failed and "line 10\n" not in failed  # only the tail
    assert "does not exist" in text and "not present" in text
    assert "```\nstage   ms\nfloor  1.0\n```" in text  # plain text is fenced, Markdown tables are not
    # a quick run embeds no plot (none was written), and nothing failed → no failure line
    quick = suite.assemble([suite.BenchResult("estimators", "x", 0, "t\n", quick=True)], info, total_seconds=1)
    assert "![scaling]" not in quick and "Failed" not in quick


def test_suite_knows_every_bench_script() -> None:
    suite = _suite()
    assert list(suite.BY_NAME) == ["load", "grpo", "estimators", "trainer_path", "structural", "audit", "stream",
                                   "rollout", "integrations"]
    on_disk = {p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py")}
    assert on_disk <= set(suite.BY_NAME), on_disk - set(suite.BY_NAME)
    assert set(suite.QUICK_ARGS) <= set(suite.BY_NAME)
