"""Running the command line as a user does, and checking its one-line errors.

``run`` invokes the ``stepcredit`` app in this process (typer's ``CliRunner``: the same argument parsing,
the same exit status, stdout and stderr apart) — a fresh Python process costs seconds of imports per call,
most of the CLI tests' time. A crash (an exception the CLI did not turn into its one-line error) shows
in ``stderr`` as the traceback a process would print, with exit status 1. ``run(..., process=True)`` runs
``python -m stepcredit.cli`` in a subprocess, for what only a process shows (imports, signals, the
interpreter's own output)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _cwd(path: Path | None) -> Iterator[None]:
    before = Path.cwd()
    if path is not None:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run(*args: str, cwd: Path | None = None, timeout: float = 300,
        process: bool = False) -> subprocess.CompletedProcess[str]:
    """``stepcredit ARGS``; ``timeout`` (a hang guard, not a timing assertion) applies to a process."""
    if process:
        return subprocess.run([sys.executable, "-m", "stepcredit.cli", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
    from typer.testing import CliRunner

    from stepcredit.cli import app

    with _cwd(cwd):
        result = CliRunner().invoke(app, list(args), prog_name="stepcredit")
    stderr, code = result.stderr, result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
        code = 1
    return subprocess.CompletedProcess(["stepcredit", *args], code, result.stdout, stderr)


def one_line_exit_2(res: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Bad input: exit status 2, one line on stderr holding ``fragment``, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert fragment in res.stderr, res.stderr
