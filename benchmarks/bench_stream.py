"""Streamed credit and audit of large Parquet datasets: time, throughput and peak memory as the log
grows to a million trajectories, locally and on Ray Data.

Run: ``.venv/bin/python benchmarks/bench_stream.py`` (sizes 100k, 250k, 500k, 1M trajectories; ~15
minutes on 2 cores) or ``--quick`` (20k and 40k; ~1 minute). The datasets are written once under
``--data`` (default ``/tmp/stepcredit-bench-stream``, ~60 MiB per 100k trajectories) and reused.

Data: synthetic tool-use trajectories (``make_records``: plan of 7 writes, up to 12 steps), 8 per
group. Eight different
base logs of 10,000 trajectories (seeds 0–7) are cycled under new group and trajectory names to reach
each size, one file of 10,000 trajectories each (row groups of 8,192: ``write_parquet``).

Each row is a fresh subprocess (so *peak* is the whole process's highest resident memory, VmHWM:
Python, torch, stepcredit and everything the stream holds; *driver CPU s* its user + system time,
which other load on the machine inflates less than wall time) running, on the dataset folder:

* ``credit``: ``stream_credit(folder, "gigpo", out.parquet, chunk_groups=1024)``;
* ``audit``: ``stream_audit(folder, ["grpo", "gigpo", "call_consensus"], chunk_groups=1024,
  bootstrap=1000)`` — every figure of the audit with 1,000 bootstrap resamples of all the groups.

The Ray row runs the same audit with ``engine="ray"`` on a local cluster of 2 CPUs, started before
the clock. Its *peak* is the driver process's alone (the workers are separate processes) and its
ratio column is to the local engine's µs at the same size. The script exits 1 unless its figures
equal the local engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from timing import memory_bytes  # benchmarks/timing.py

BASE = 10_000
BASES = 8
SIZES = [100_000, 250_000, 500_000, 1_000_000]
QUICK = [20_000, 40_000]
RECIPES = ["grpo", "gigpo", "call_consensus"]
CHUNK_GROUPS = 1024
GEN = dict(plan_length=7, max_steps=12, skill=(0.9, 1.0))


def _base(seed: int, folder: Path) -> Path:
    """One base log of ``BASE`` trajectories as Parquet (made once)."""
    from stepcredit.envs.synthetic import make_rollouts
    from stepcredit.io import write_parquet

    path = folder / "base" / f"seed{seed}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(make_rollouts(BASE // 8, 8, seed=seed, **GEN), path)  # type: ignore[arg-type]
    return path


def dataset(size: int, root: Path) -> Path:
    """A folder of ``size`` trajectories (``size / BASE`` files), made once."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from stepcredit.io import ROW_GROUP_SIZE

    folder = root / f"n{size}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    bases = [pq.read_table(_base(s, root)) for s in range(BASES)]
    for k in range(size // BASE):
        t = bases[k % BASES]
        for column in ("id", "group"):  # new names: the k-th copy is another set of tasks
            kind = t[column].type
            renamed = pc.binary_join_element_wise(t[column], pa.scalar(f"#{k}", kind), pa.scalar("", kind))
            t = t.set_column(t.schema.get_field_index(column), column, renamed)
        pq.write_table(t, folder / f"part-{k:05d}.parquet", row_group_size=ROW_GROUP_SIZE)
    done.touch()
    return folder


def one(stage: str, folder: str, engine: str) -> None:
    """Subprocess body: run one stage, print its time and the process's peak memory as JSON."""
    import torch

    torch.set_num_threads(2)
    from stepcredit.streaming import RayOptions, stream_audit, stream_credit

    extra: dict[str, object] = {}
    if engine == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    start, cpu = time.perf_counter(), time.process_time()
    if stage == "credit":
        out = Path(folder).parent / f"credit-{Path(folder).name}.parquet"
        counts = stream_credit(folder, "gigpo", out, chunk_groups=CHUNK_GROUPS, engine=engine)  # type: ignore[arg-type]
        extra = {"trajectories": counts["trajectories"], "chunks": counts["chunks"]}
        out.unlink()
    else:
        a = stream_audit(folder, RECIPES, chunk_groups=CHUNK_GROUPS, bootstrap=1000, engine=engine,  # type: ignore[arg-type]
                         ray=RayOptions())
        d = a.to_dict()
        d.pop("seconds")
        extra = {"trajectories": a.trajectories, "chunks": a.chunks, "figures": json.dumps(d, sort_keys=True)}
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if engine == "ray":
        import ray

        ray.shutdown()
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak": memory_bytes("VmHWM"), **extra}))


def measure(stage: str, folder: Path, engine: str = "local") -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", stage, str(folder), engine], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{stage} on {folder} ({engine}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/stepcredit-bench-stream"))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    sizes = QUICK if args.quick else SIZES
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        folder = dataset(size, args.data)
        print(f"dataset {size:,}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for stage in ("credit", "audit"):
            r = measure(stage, folder)
            rows.append({"size": size, "stage": stage, "engine": "local", **r})
            print(f"{size:>9,} {stage:6s} local {r['seconds']:7.1f} s  peak {r['peak'] / 2**20:7.0f} MiB",
                  file=sys.stderr)
    ray_size = sizes[0]
    folder = dataset(ray_size, args.data)
    r = measure("audit", folder, "ray")
    local = next(x for x in rows if x["size"] == ray_size and x["stage"] == "audit")
    rows.append({"size": ray_size, "stage": "audit", "engine": "ray (2 CPUs)", **r,
                 "equal": r["figures"] == local["figures"]})
    print(f"{ray_size:>9,} audit  ray   {r['seconds']:7.1f} s  equal {rows[-1]['equal']}", file=sys.stderr)

    first = {stage: next(x for x in rows if x["stage"] == stage) for stage in ("credit", "audit")}
    print(f"torch threads 2 (local engine: 1 per chunk), {os.cpu_count()} cores; chunk_groups {CHUNK_GROUPS}; "
          f"recipes credit: gigpo, audit: {', '.join(RECIPES)} with 1,000 bootstrap resamples")
    print()
    print("| trajectories | stage | engine | chunks | seconds | trajectories/s | µs per trajectory "
          "| × smallest size's µs (Ray: × local's) | driver CPU s | peak MiB (Ray: driver) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        per = 1e6 * x["seconds"] / x["size"]
        ref = local if x["engine"] != "local" else first[x["stage"]]  # Ray: the local engine, same size
        base = 1e6 * ref["seconds"] / ref["size"]
        print(f"| {x['size']:,} | {x['stage']} | {x['engine']} | {x['chunks']} | {x['seconds']:.1f} "
              f"| {x['size'] / x['seconds']:,.0f} | {per:.1f} | {per / base:.2f} | {x['cpu']:.1f} "
              f"| {x['peak'] / 2**20:,.0f} |")
    ray_row = rows[-1]
    print()
    print(f"Ray engine figures equal to the local engine's (every metric, interval and table, compared as "
          f"text): {'yes' if ray_row['equal'] else 'NO'}.")
    if args.json:
        for x in rows:
            x.pop("figures", None)
        args.json.write_text(json.dumps(rows, indent=2))
    if not ray_row["equal"]:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
