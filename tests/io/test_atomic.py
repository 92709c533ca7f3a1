"""Outputs are written whole: created with the permissions the umask gives (not mkstemp's 0600), and a
SIGTERM during a write leaves no temporary file (the CLI turns the signal into an unwinding exit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stepcredit.io import atomic_write


def test_an_output_gets_the_umask_permissions(tmp_path: Path) -> None:
    before = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "out.json") as f:
            f.write("{}")
    finally:
        os.umask(before)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o640


SLOW_WRITE = """
import signal, sys, time
from stepcredit.cli import _terminate
from stepcredit.io import atomic_write
signal.signal(signal.SIGTERM, _terminate)
with atomic_write(sys.argv[1]) as f:
    f.write("partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the write is under way
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
