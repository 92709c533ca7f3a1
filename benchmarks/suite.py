"""The benchmark suite: every ``bench_*.py`` in a fresh subprocess, their tables into ``RESULTS.md``.

Run: ``make bench`` (= ``.venv/bin/python benchmarks/suite.py``; the whole suite takes a while, see the
total in ``RESULTS.md``). Each script prints its Markdown tables to stdout and its progress to stderr;
the suite streams the progress, captures both, and writes ``benchmarks/RESULTS.md`` anew: a header
(machine, versions, date, total wall time), then per bench its heading, the exact command, a static
explanation of what is measured (kept here, with no figures in it: every number in ``RESULTS.md``
comes from the captured output), and the captured tables. A script that does not exist is skipped with
a note; a script that fails is reported in its section with the tail of its stderr, and the suite exits
non-zero after writing the rest.

Options: ``--only NAME[,NAME]`` runs a subset and prints the Markdown instead of writing
``RESULTS.md``; ``--quick`` passes each script its quick arguments (``QUICK_ARGS``; scripts without
any run as usual) and also prints instead of writing; ``--output PATH`` writes the Markdown there in
any case.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
STDERR_TAIL = 40  # lines of a failed bench's stderr shown in RESULTS.md


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    about: str  # what is measured and how to read it; no figures (they would go stale)
    image: str | None = None  # a file the script writes next to RESULTS.md, embedded after the tables

    @property
    def script(self) -> Path:
        return HERE / f"bench_{self.name}.py"


# the arguments each script takes for a quick run (--quick); scripts not listed run in full
QUICK_ARGS: dict[str, list[str]] = {
    "estimators": ["--quick"],
    "trainer_path": ["--no-peak", "--size", "1024", "1024"],
    "stream": ["--quick"],
}

BENCHES: list[Bench] = [
    Bench(
        "load",
        "Loading the tau2-bench airline logs",
        """The real tau2-bench airline logs (`../shared/data/tau2-bench/airline`) through each stage of
`load`: a plain `json.load` of the same files (the floor any JSON loader pays), parsing and labelling
the records, building the records into `Rollouts` (tensors + validation), `load(path)` end to end,
then writing the batch to Parquet and loading it back. Ratios are to `json.load` measured in the same
run.

Python's cyclic garbage collector is a swing factor here: its passes over the many fresh (acyclic)
objects a JSON parse makes land on whichever stage happens to cross a threshold, so the floor and the
parse stage vary between runs more than the others. `load`
pauses the collector while it parses (everything it makes is freed by reference counting). The
schema-driven parser and builder read every annotation column through its declaration, which costs
a little over hand-written ones; Parquet skips the JSON parse and the records entirely.""",
    ),
    Bench(
        "grpo",
        "GRPO advantages → `(B, T)` tokens vs verl",
        """Single-turn verl batches (float32, the 0/1 outcome at the last valid token, random lengths in
[1, T], uuid-string `index`, group size 8). `floor` is `scores[:, None] * mask` with `scores` summed
beforehand (one read of the mask, one write of the output); verl 0.9.1's `compute_grpo_outcome_advantage`
(`verl loop`) and `compute_grpo_vectorized_outcome_advantage` (`verl vectorized`) also sum
`token_level_rewards` themselves. `stepcredit` is `grpo(rollouts).to_tokens(rollouts)` on a `Rollouts`
built once from the batch; `stepcredit build` is that one-off `from_trainer_tensors` cost (steps from
mask runs, groups from uids, validation). Peak = resident memory above the inputs, each method in a
fresh subprocess. The script checks that stepcredit and verl's loop agree on the largest batch.

At the largest sizes much of every method's time is the kernel faulting in the pages of the fresh
output tensor, which the floor pays too. stepcredit broadcasts through its bool mask
(`segments.rows_under_mask`: rows of the output zeroed and filled under the mask in cache-sized
blocks, bit for bit `torch.where(bool_mask, A[:, None], 0)`), reading a quarter of the bytes of a
float mask. At the small sizes the absolute times are dominated by call and threading overheads.""",
    ),
    Bench(
        "estimators",
        "Every credit estimator and a full recipe vs the floor, across sizes",
        """A realistic multi-turn verl batch at each size, built with `from_trainer_tensors`: 2–6 model turns
per row separated by tool outputs, a tool call at the end of every turn but the last (found by its
open / close token patterns, its body fixed by the turn and the action, so calls repeat within a
task), sparse step rewards, integer anchor states (turn, previous action) that repeat within a group,
group size 8, uuid-string `index`; calls named by their token ids, and beside the tensors the columns
a trainer holds: `call_ok`, a stated confidence per row, a PRM score per step. The tree estimators
run on the same tensors as a tree batch (2 trees × 4 leaves per task, leaves branching off each
tree's first chain and sharing its nodes before the branch). Every registered credit component that
applies to a training batch is timed as `component(rollouts, **params).to_tokens(rollouts)` with the
built-in recipes' parameters, starting cold (the batch's cached indices dropped first); `full recipe`
is `binary_gate` + `resample_on_correct` (keep 6 of 8) + `gigpo` + `toolpo`, then `to_tokens` on the
kept rows. References in the same run: the floor `scores[:, None] * mask`, verl 0.9.1's GRPO loop and
vectorized estimator, and (smallest size only, at the steps level) the GiGPO loop oracle of
`tests/support/estimator_oracles.py` beside `gigpo` without the token broadcast. `build` is the
`from_trainer_tensors` call itself. Peak extra memory at the largest size only, each method in a
fresh subprocess. The script checks gigpo and the tree estimators against their loop references.

Reading it: outcome-only estimators (one value per trajectory) reach the tokens through one
broadcast under the mask and stay near the floor; estimators with step or call components spread
per-step (and per-call) values over their token spans instead, which is what separates them from the
floor; the label-free call estimators add the grouping of calls by identity, and the recipe its
selections (a new, smaller batch) on top.""",
        image="scaling.png",
    ),
    Bench(
        "trainer_path",
        "The trainer's per-batch path: from trainer tensors to the advantage",
        """What a trainer pays per batch at its size, from the raw verl batch tensors (single-turn and
multi-turn layouts) to the `(B, T)` advantage it consumes, as a multiple of the broadcast floor
measured on the same batch: building the `Rollouts` (`from_trainer_tensors`), running a recipe and
the token broadcast, each trajectory-level estimator on a prebuilt batch, and a full recipe through
the verl integration's row layout. The script's own doc string and its table name the methods and
the targets; peak memory per method in a fresh subprocess unless `--no-peak`.""",
    ),
    Bench(
        "structural",
        "Structural estimators vs loop references",
        """GiGPO on a batch of many tasks × 8 trajectories × 30 steps with anchor states revisited (3
choices per step index, small integer ids) and sparse step rewards, against two loop references in
`tests/support/estimator_oracles.py`: the test oracle over Python floats, and the same loops in the cost
structure of verl-agent's `compute_gigpo_outcome_advantage` (per-row torch scalars,
`torch.mean`/`torch.std` per group). The tree estimators
(`tree_grpo`, `treerl`, `treepo`) on `make_tree_rollouts` batches against their loops. Every stepcredit
call is timed as a first call on its batch (every cached index dropped before each
repeat); the script checks the max |diff| to each reference. The second table puts the other
step-level estimators on the GiGPO batch as a ratio to `grpo`.

When state keys are small non-negative ids (tree nodes, dense observation ids, the states the log
loaders produce) the `(group, state)` index is a counting pass; arbitrary 64-bit keys need two sorts,
which the "hashed states" row shows.""",
    ),
    Bench(
        "audit",
        "Audit at scale: group bootstrap memory, bounded report",
        """`make_rollouts(groups, 8, seed=0)` batches written to Parquet once; each row is a fresh subprocess
that reads it and runs `audit(rollouts, recipes, bootstrap=1000, seed=0)`, then `write_report` (its
default number of trajectory sections). *loaded* = resident memory with torch, stepcredit and the
batch in; *peak* = the process's highest resident memory (VmHWM, reset through `/proc/self/clear_refs`
at the start of each stage) during the first call of the stage — the whole process, batch included.
Times: median of further calls. `groups` is `audit` itself (the bootstrap from per-group sufficient
statistics); `dense` (`dense_audit`) computes each recipe's credit the same way and then the
original (samples × labelled units) evaluation kept in `tests/support/audit_oracles.py`, run only where its
predicted peak stays far below the machine's memory (it grows with every labelled unit). Where both
ran, the script checks that their intervals agree. `default` = the `DEFAULT_RECIPES`.

The group bootstrap holds the (samples × groups) draw counts, per-group statistics and bounded AUROC
temporaries. The report keeps every summary and shows step-by-step sections only for the
worst-blamed trajectories, saying how many were left out, so its size stays bounded. The CLI end to
end (`stepcredit audit b.parquet --bootstrap 1000 -o report.html --markdown` under
`/usr/bin/time -v`) is not part of the suite. Times on a shared machine vary with other load.""",
    ),
    Bench(
        "stream",
        "Streaming audit of large Parquet datasets (local and on Ray)",
        """Streamed credit and audit of Parquet datasets as the log grows far past what one would load at
once: time, throughput and peak memory, locally and on Ray Data. Synthetic tool-use trajectories
(`make_records`), 8 per group, a few different base logs cycled under new group and trajectory names
to reach each size, written once under `--data` and reused. Each row is a fresh subprocess, so
*peak* is the whole process's highest resident memory (VmHWM: Python, torch, stepcredit and
everything the stream holds): `credit` is `stream_credit(folder, "gigpo", out.parquet)` in chunks of
groups; `audit` is `stream_audit` of several recipes with bootstrap resamples of all the groups. The
Ray rows run the same audit with `engine="ray"` on a local cluster started before the clock; their
peak is the driver's alone (the workers are other processes), and their ratio is to the local
engine's µs at the same size. The script fails unless their figures equal the local engine's.""",
    ),
    Bench(
        "rollout",
        "Rollouts with the tiny policy, trees vs chains, and one RL step",
        """The scripted noisy oracle (no model) first: the engine and the environments alone, per family.
Then the tiny HF policy (Qwen2-style, hidden 64, 2 layers, tokenizer trained on the env's text) on
the default experiment's task at equal trajectory counts, chains vs Tree-GRPO trees (M=2, N=3, L=1),
randomly initialised and after the warm start; finally one RL step of the trainer after the warm
start (rollouts, credit, PPO update = forward + backward + AdamW; median of a few steps).

Trees generate fewer tokens per kept trajectory than chains: a share of the tokens in a tree batch
repeat a shared prefix, since a branch starts at a random node of the initial path (Tree-GRPO's larger
savings come from larger trees relative to the depth, which the engine's `trees/expand/iterations/keep`
reach; this benchmark keeps the trainer's setting). Whether trees save wall time shows in the table:
the expansions run as a second, smaller batch of generation rounds after the initial chains, and with
a tiny model a round's cost is mostly per-token overhead rather than batch size. The last table
splits an RL step into generation, credit and the update.""",
    ),
    Bench(
        "integrations",
        "Credit through the integrations: what a verl step pays",
        """A verl-layout multi-turn batch (2–6 model turns per row separated by tool outputs, every turn but
the last a `<tool_call>` whose body is one of 64 token sequences, every fourth session split over two
rows, group size 8), from raw tensors to the `(B, T)` advantage, one process: the floor, verl's
vectorized GRPO, the registered `stepcredit_grpo` (steps from mask runs, groups from uids,
validation, broadcast), and the trainer mode (`rows_from_verl`: sessions joined, the recipe, metrics)
with trajectory-level (`grpo`), step-level (`per_turn`) and call-level (`call_consensus`, calls named
by token ids or by decoding their JSON) credit.

Reading it: `stepcredit_grpo`'s cost over the floor is building the `Rollouts` plus the broadcast;
the trainer mode adds the session join, the second batch and the metrics, step-level credit the spreading of
per-step values over the step spans, and call-level credit the call spans, their names and the
spreading over the call spans.""",
    ),
]
BY_NAME = {b.name: b for b in BENCHES}


@dataclass(frozen=True)
class BenchResult:
    """What one bench script did: its command, exit status (``None``: the script does not exist),
    captured stdout / stderr and wall seconds."""

    name: str
    command: str
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    quick: bool = False  # run with its quick arguments (a quick run writes no images)

    @property
    def missing(self) -> bool:
        return self.returncode is None

    @property
    def failed(self) -> bool:
        return self.returncode not in (None, 0)


# --------------------------------------------------------------------------------------- the header
def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """The machine and the versions the figures were measured with."""
    mem = _first("/proc/meminfo", "MemTotal")
    gib = f"{int(mem.split()[0]) / 2**20:.0f} GiB" if mem else "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cores = sum(1 for line in f if line.startswith("processor"))
    except OSError:
        cores = os.cpu_count() or 0
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": str(cores),
        "memory": gib,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "verl": _version("verl"),
        "ray": _version("ray"),
    }


# ---------------------------------------------------------------------------------------- assembly
def _fence(text: str) -> str:
    return "```\n" + text.rstrip("\n") + "\n```"


def _tail(text: str, lines: int = STDERR_TAIL) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _as_markdown(stdout: str) -> str:
    """A script's stdout as it goes into the page: verbatim when it prints Markdown tables, else (a
    plain-text table, say) fenced so its columns stay aligned."""
    text = stdout.rstrip("\n")
    return text if any(line.startswith("|") for line in text.splitlines()) else _fence(text)


def section(bench: Bench, result: BenchResult) -> str:
    """One bench's section: heading, command, static explanation, then its captured output (or why
    there is none)."""
    out = [f"## {bench.title}", "", f"Command: `{result.command}`", ""]
    if result.missing:
        out += [f"*Not run: `benchmarks/{bench.script.name}` does not exist.*", ""]
        return "\n".join(out)
    out += [bench.about, ""]
    if result.failed:
        out += [
            f"**FAILED** (exit code {result.returncode}, after {result.seconds:.0f} s). The tail of its stderr:",
            "",
            _fence(_tail(result.stderr)),
            "",
        ]
        if result.stdout.strip():
            out += ["What it printed before failing:", "", _as_markdown(result.stdout), ""]
        return "\n".join(out)
    out += [f"Ran in {result.seconds:.0f} s. Output:", "", _as_markdown(result.stdout), ""]
    if bench.image and not result.quick:
        out += [f"![{Path(bench.image).stem}]({bench.image})", ""]
    return "\n".join(out)


def assemble(
    results: list[BenchResult],
    info: dict[str, str],
    *,
    total_seconds: float,
    command: str = "make bench",
    date: str | None = None,
) -> str:
    """The whole ``RESULTS.md``: header, a status line per bench, then every bench's section (a pure
    function of the captured outputs)."""
    date = date or datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    failed = [r.name for r in results if r.failed]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `{command}` (`benchmarks/suite.py`) on {date}; total wall time "
        f"{total_seconds / 60:.1f} min. Regenerate it rather than editing it: the explanations are kept "
        "in `benchmarks/suite.py`, every figure below is the captured output of its script.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} memory; Python {info['python']}, "
        f"torch {info['torch']}, verl {info['verl']}, ray {info['ray']}. Each bench runs in a fresh process; "
        "figures are medians of repeated runs after a warm-up unless its section says otherwise, and ratios "
        "are to a reference measured in the same run.",
        "",
    ]
    if failed:
        lines += [f"**Failed: {', '.join(failed)}** (see their sections).", ""]
    lines += ["| bench | status | seconds |", "|---|---|---:|"]
    for r in results:
        status = "not present" if r.missing else f"FAILED (exit {r.returncode})" if r.failed else "ok"
        lines.append(f"| [{r.name}](#{_anchor(BY_NAME[r.name].title)}) | {status} | {r.seconds:.0f} |")
    lines.append("")
    for r in results:
        lines += [section(BY_NAME[r.name], r), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces → hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


# ------------------------------------------------------------------------------------------ running
def _display(path: str) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def command_of(bench: Bench, quick: bool) -> list[str]:
    args = QUICK_ARGS.get(bench.name, []) if quick else []
    return [sys.executable, str(bench.script), *args]


def run(bench: Bench, quick: bool) -> BenchResult:
    """Run one bench script in a fresh subprocess, echoing its stderr (progress) as it comes."""
    cmd = command_of(bench, quick)
    shown = " ".join([_display(cmd[0]), _display(cmd[1]), *cmd[2:]])
    if not bench.script.exists():
        print(f"[suite] {bench.name}: benchmarks/{bench.script.name} does not exist, skipped", file=sys.stderr)
        return BenchResult(bench.name, shown, None, quick=quick)
    print(f"[suite] {bench.name}: {shown}", file=sys.stderr)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            sys.stderr.write(f"  [{bench.name}] {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    rc = proc.wait()
    reader.join()
    seconds = time.perf_counter() - t0
    print(f"[suite] {bench.name}: exit {rc} after {seconds:.0f} s", file=sys.stderr)
    return BenchResult(bench.name, shown, rc, stdout, "".join(err), seconds, quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmark suite and write benchmarks/RESULTS.md.")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BY_NAME)} (prints, does not write)")
    parser.add_argument("--quick", action="store_true", help="quick arguments for the scripts that take them")
    parser.add_argument("--output", type=Path, help="write the Markdown here (even with --only / --quick)")
    args = parser.parse_args(argv)
    names = list(BY_NAME)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown bench(es) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
        names = [n for n in names if n in wanted]  # the suite's order
    t0 = time.perf_counter()
    results = [run(BY_NAME[name], args.quick) for name in names]
    total = time.perf_counter() - t0
    command = "make bench" if not (args.only or args.quick) else " ".join(
        ["python benchmarks/suite.py", *(argv if argv is not None else sys.argv[1:])]
    )
    text = assemble(results, machine(), total_seconds=total, command=command)
    target = args.output if args.output is not None else (None if args.only or args.quick else RESULTS)
    if target is None:
        sys.stdout.write(text)
    else:
        target.write_text(text)
        print(f"[suite] wrote {_display(str(target))} ({total / 60:.1f} min)", file=sys.stderr)
    failed = [r.name for r in results if r.failed]
    if failed:
        print(f"[suite] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
