"""Outputs that never overwrite an input and are never left torn: checked, then written to a
temporary file beside the target and renamed over it in one step."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from stepcredit.core.errors import RolloutError

__all__ = ["atomic_write", "check_output"]


def check_output(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` if it can be written: not a folder, in a folder that exists, and not one of ``inputs``
    (nor a file inside an input folder that would be read); else ``RolloutError`` naming it."""
    p = Path(path)
    if p.is_dir():
        raise RolloutError("is a folder; expected a file name", source=str(p), field="output")
    if not p.parent.is_dir():
        raise RolloutError(f"the folder {str(p.parent)!r} does not exist", source=str(p), field="output")
    target = p.resolve()
    for given in inputs:
        q = Path(given).resolve()
        if target == q:
            raise RolloutError(
                f"would overwrite the input {str(given)!r}; choose another output", source=str(p), field="output"
            )
        if q.is_dir() and q in target.parents and target.suffix in (".json", ".jsonl", ".parquet"):
            raise RolloutError(
                f"is inside the input folder {str(given)!r}, where it would be read as a log next "
                "time; choose another folder",
                source=str(p),
                field="output",
            )
    return p


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``);
    elsewhere by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write ``path`` all at once: the file appears (or replaces the old one) only when the block
    finishes; an error or an interrupt leaves the old file, whole, and no temporary file behind."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the file gets what open() would give it
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
