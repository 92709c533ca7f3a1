"""Loading the real tau2 logs into ``Rollouts``: JSON parse, records, packing; then Parquet both ways.

Run: ``.venv/bin/python benchmarks/bench_load.py [PATH]`` (default ../shared/data/tau2-bench/airline).
Reports the median of repeated runs after one warm-up, and the ratio of each stage to a plain
``json.load`` of the same files (the floor any JSON loader pays).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from stepcredit.core import build
from stepcredit.io import load, log_files, write_parquet
from stepcredit.io.tau2 import read_tau2_records
from timing import median_ms  # benchmarks/timing.py

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau2-bench" / "airline"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    files = log_files(path)
    size = sum(f.stat().st_size for f in files) / 2**20
    rollouts = load(path)
    records = [rec for f in files for rec in read_tau2_records(f)]
    with tempfile.TemporaryDirectory() as tmp:
        pq_path = Path(tmp) / "logs.parquet"
        write_parquet(rollouts, pq_path)
        rows = [
            ("json.load of the files (floor)", median_ms(lambda: [json.loads(f.read_text()) for f in files])),
            ("parse + label records", median_ms(lambda: [read_tau2_records(f) for f in files])),
            ("pack records -> Rollouts", median_ms(lambda: build(records))),
            ("load(path) end to end", median_ms(lambda: load(path))),
            ("write Parquet", median_ms(lambda: write_parquet(rollouts, pq_path))),
            ("load(Parquet) -> Rollouts", median_ms(lambda: load(pq_path))),
        ]
    floor = rows[0][1]
    print(f"{path}: {len(files)} files, {size:.1f} MiB, {rollouts}")
    print(f"{'stage':34} {'median ms':>10} {'x json.load':>12}")
    for name, ms in rows:
        print(f"{name:34} {ms:10.1f} {ms / floor:12.2f}")


if __name__ == "__main__":
    main()
