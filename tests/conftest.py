from __future__ import annotations

import os
from pathlib import Path

# One thread per test process (and per subprocess it starts): the suite runs one xdist worker per core,
# and torch's intra-op threads on top of that oversubscribe the cores and slow every test down.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402 - after the thread variables, before anything imports torch

TAU2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tau2-bench" / "airline"


@pytest.fixture(scope="session")
def tau2_dir() -> Path:
    if not TAU2.is_dir():
        pytest.skip(f"real tau2 logs not found at {TAU2}")
    return TAU2


@pytest.fixture(scope="session")
def tau2_rollouts(tau2_dir: Path):
    from stepcredit.io import load

    return load(tau2_dir)
