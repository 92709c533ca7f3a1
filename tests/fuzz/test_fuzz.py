"""Fuzz the loaders (chat JSONL, tau2 results, Parquet, reference files, recipe YAML) and the training
side (experiment configs, resume folders, the trainer-tensor APIs; ``tests/fuzz/training.py``).

Each loader's campaign (``tests/fuzz/campaign.py``) runs in its own process under an address-space
bound and a wall-clock limit, and must end with zero failures: every call returns or raises the
documented error type with a one-line message, nothing returned is non-finite, nothing runs out of
memory or time. ``STEPCREDIT_FUZZ_EXAMPLES`` sets the examples per campaign (default 1000 per loader,
500 per training-side campaign; more on demand), ``STEPCREDIT_FUZZ_SEED`` the seed (default 0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOADERS = ["chat", "tau2", "parquet", "references", "recipe", "experiment", "resume", "tensors"]
GIVEN = os.environ.get("STEPCREDIT_FUZZ_EXAMPLES")
TRAINING = ("experiment", "resume", "tensors")  # 500 each by default: 1,500 training-side cases in make test


def _examples(loader: str) -> int:
    return int(GIVEN) if GIVEN else (500 if loader in TRAINING else 1000)
SEED = int(os.environ.get("STEPCREDIT_FUZZ_SEED", "0"))
HEADROOM_MIB = 2048


def _limit_s(examples: int) -> float:
    return 120 + 0.25 * examples  # about ten times what a campaign takes on one core


def _explain(loader: str, res: subprocess.CompletedProcess[str] | None, last: Path) -> str:
    said = last.read_text(errors="replace")[:3000] if last.exists() else "(none)"
    if res is None:
        return f"the {loader} campaign ran past {_limit_s(_examples(loader)):.0f} s; the input it was on: {said}"
    how = f"killed by signal {signal.Signals(-res.returncode).name}" if res.returncode < 0 else f"rc {res.returncode}"
    return (
        f"the {loader} campaign ended without a summary ({how}; out of memory or a crash in native code?)\n"
        f"the input it was on: {said}\nstderr: {res.stderr[-3000:]}"
    )


@pytest.mark.parametrize("loader", LOADERS)
def test_fuzz(loader: str, tmp_path: Path) -> None:
    last = tmp_path / "last.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",  # glibc arenas reserve address space per thread; keep the bound meaningful
    }
    cmd = [
        sys.executable, "-m", "tests.fuzz.campaign", loader, "--examples", str(_examples(loader)), "--seed", str(SEED),
        "--headroom-mib", str(HEADROOM_MIB), "--last", str(last),
    ]  # fmt: skip
    try:
        limit = _limit_s(_examples(loader))
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(_explain(loader, None, last))
    lines = res.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(_explain(loader, res, last))
    assert "error" not in summary, f"the {loader} campaign broke:\n{summary['error']}"
    assert summary["examples"] >= _examples(loader), summary
    failures = summary["failures"]
    if failures:
        report = "\n\n".join(json.dumps(f, indent=1, ensure_ascii=True, default=repr)[:3000] for f in failures)
        pytest.fail(f"{len(failures)} distinct failure(s) fuzzing {loader} (seed {SEED}):\n{report}", pytrace=False)
