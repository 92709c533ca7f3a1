"""The audit at scale: wall time and peak memory of ``audit(..., bootstrap=1000)`` and of the HTML report.

Run: ``.venv/bin/python benchmarks/bench_audit.py`` (~2.5 minutes on 2 cores; no process above ~3.5 GiB).

Recipes: ``grpo`` and ``call_consensus`` at every size, and at 100k trajectories also the default set
(``DEFAULT_RECIPES``, ten recipes: what ``stepcredit audit`` runs without ``--recipes``). 1,000
bootstrap resamples of the groups, seed 0; the report with its default 200 trajectory sections.

Batches: ``make_rollouts(groups, 8, seed=0)`` (synthetic labelled tool calls, ~3.6 per trajectory), built
once here and written to Parquet. Every configuration then runs in a fresh subprocess that reads the
Parquet file, so peaks never mix: ``loaded`` is the process's resident memory once torch, stepcredit
and the batch are in (VmRSS); ``audit peak`` / ``report peak`` are the process's highest resident
memory during the first ``audit(rollouts, recipes, bootstrap=1000)`` / the first ``write_report``
(VmHWM, reset through ``/proc/self/clear_refs`` at the start of each stage) — the whole process,
batch and lazy imports included, which is what has to fit in a memory limit. Times are the median of
three further calls (the shared 2-core machine makes single runs noisy).

Implementations of the bootstrap: ``groups`` is ``audit`` (per-group sufficient statistics);
``dense`` (``dense_audit``) computes each recipe's credit the same way and then the original
(samples × units) evaluation kept in
``tests/support/audit_oracles.py``, run only at sizes where its predicted peak stays far below the machine's
memory. Where both run on the same batch the script checks that their intervals agree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from timing import memory_bytes, reset_peak  # benchmarks/timing.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUP_SIZE = 8
BOOTSTRAP = 1000
REPEATS = 3  # timed calls after the first (median); the first call gives the peak
RECIPES = "grpo,call_consensus"
DEFAULT = "default"  # stepcredit.auditing.DEFAULT_RECIPES, what `stepcredit audit` runs without --recipes
# per batch size (groups of 8): (bootstrap implementation, recipes); the dense original only where its
# (samples × calls) float64 matrices stay far below the machine's memory (~39 KiB per labelled call)
SIZES = [
    (625, [("groups", RECIPES), ("dense", RECIPES)]),
    (1250, [("groups", RECIPES), ("dense", RECIPES)]),
    (2500, [("groups", RECIPES), ("dense", RECIPES)]),
    (12500, [("groups", RECIPES), ("groups", DEFAULT)]),
]


def _status(key: str) -> float:
    """``key`` of /proc/self/status in MiB."""
    return memory_bytes(key) / 2**20


def _median_s(fn: Callable[[], object]) -> float:
    """Median wall time of ``REPEATS`` calls of ``fn`` (already warmed up by the measured first call)."""
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dense_audit(r, names: list[str], *, bootstrap: int, seed: int) -> SimpleNamespace:
    """The audit's bootstrap as it was first written: per recipe, the credit's units and the original
    (samples × units) evaluation (``tests/support/audit_oracles.py``) on all units and on each breakdown
    subset — what ``audit`` computes from per-group statistics instead."""
    from tests.support.audit_oracles import dense_bootstrap_intervals

    from stepcredit.auditing import metrics as M
    from stepcredit.auditing.run import recipe_part
    from stepcredit.recipe import Recipe

    audits = []
    for name in names:
        _, credited = recipe_part(r, Recipe.load(name), subsets=False)
        u = M.units(r, credited.call_credit if r.call_label is not None else credited.step_credit)
        intervals = dense_bootstrap_intervals(u, r.num_groups, samples=bootstrap, seed=seed)
        for mask in M.unit_subsets(r, u).values():
            dense_bootstrap_intervals(u.subset(mask), r.num_groups, samples=bootstrap, seed=seed)
        audits.append(SimpleNamespace(name=name, intervals=intervals))
    return SimpleNamespace(recipes=audits)


def one(path: str, impl: str, recipes: str, report: bool) -> None:
    """Subprocess body: audit (and report) one batch, print the figures as JSON."""
    from stepcredit.auditing.report import write_report
    from stepcredit.auditing.run import DEFAULT_RECIPES, audit
    from stepcredit.io import read_parquet

    r = read_parquet(path)
    out: dict[str, object] = {
        "trajectories": r.num_trajectories,
        "groups": r.num_groups,
        "calls": r.num_calls,
        "loaded_mib": _status("VmRSS"),
        "threads": torch.get_num_threads(),
    }
    names = list(DEFAULT_RECIPES) if recipes == DEFAULT else recipes.split(",")
    run = audit if impl == "groups" else dense_audit
    reset_peak()
    result = run(r, names, bootstrap=BOOTSTRAP, seed=0)  # the first call: its peak is a CLI run's
    out["audit_peak_mib"] = _status("VmHWM")
    out["intervals"] = {a.name: a.intervals for a in result.recipes}
    out["audit_s"] = _median_s(lambda: run(r, names, bootstrap=BOOTSTRAP, seed=0))
    if report:
        with tempfile.TemporaryDirectory() as tmp:
            reset_peak()
            page = write_report(result, Path(tmp) / "report.html")
            out["report_peak_mib"] = _status("VmHWM")
            out["report_bytes"] = page.stat().st_size
            out["sections"] = page.read_text().count("<section class='traj'")
            out["report_s"] = _median_s(lambda: write_report(result, Path(tmp) / "report.html"))
    print(json.dumps(out))


def run_one(path: Path, impl: str, recipes: str, report: bool) -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, __file__, "--one", str(path), impl, recipes, str(int(report))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    from stepcredit.envs import make_rollouts
    from stepcredit.io import write_parquet

    rows = []
    disagreement = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for groups, configs in SIZES:
            path = Path(tmp) / f"{groups}.parquet"
            t0 = time.perf_counter()
            write_parquet(make_rollouts(groups, GROUP_SIZE, seed=0), path)
            print(f"built {groups} × {GROUP_SIZE} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            got = {}
            for impl, recipes in configs:
                g = got[impl, recipes] = run_one(path, impl, recipes, report=impl == "groups")
                rows.append((impl, recipes, g))
                print(
                    f"{impl:6s} {recipes:18s} {g['trajectories']:7d} traj: audit {g['audit_s']:.1f} s, "
                    f"peak {g['audit_peak_mib']:.0f} MiB (loaded {g['loaded_mib']:.0f})",
                    file=sys.stderr,
                )
            if ("dense", RECIPES) in got:
                a, b = got["groups", RECIPES]["intervals"], got["dense", RECIPES]["intervals"]
                for name in RECIPES.split(","):
                    for key, (lo, hi) in a[name].items():
                        lo2, hi2 = b[name][key]
                        for x, y in ((lo, lo2), (hi, hi2)):
                            if x == x or y == y:  # both NaN is agreement
                                disagreement = max(disagreement, abs(x - y))
    print(
        f"torch {torch.__version__}, {rows[0][2]['threads']} threads, {os.cpu_count()} cores; "
        f"{BOOTSTRAP} bootstrap resamples; max |groups − dense| over all intervals: {disagreement:.1e}"
    )
    print()
    print(
        "| trajectories | groups | labelled calls | recipes | bootstrap | loaded MiB | audit s | audit peak MiB "
        "| report s | report peak MiB | report MB | sections |"
    )
    print("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for impl, recipes, g in rows:
        rep = (
            f"{g['report_s']:.1f} | {g['report_peak_mib']:.0f} | {g['report_bytes'] / 1e6:.2f} | {g['sections']}"
            if "report_s" in g
            else "– | – | – | –"
        )
        print(
            f"| {g['trajectories']:,} | {g['groups']:,} | {g['calls']:,} | {recipes.replace(',', ', ')} | {impl} "
            f"| {g['loaded_mib']:.0f} "
            f"| {g['audit_s']:.1f} | {g['audit_peak_mib']:.0f} | {rep} |"
        )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1")
    else:
        main()
