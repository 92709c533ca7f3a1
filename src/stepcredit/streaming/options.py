"""What both engines of ``stepcredit.streaming`` share: torch on one thread per chunk, and where the
Ray engine runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["RayOptions", "one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block: a chunk's numbers do not depend on how many threads
    split a reduction (Ray workers run one thread each too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class RayOptions:
    """Where ``engine="ray"`` runs: an existing cluster (``address``, e.g. ``"auto"``), else a local
    one started for the call with ``num_cpus`` CPUs (default: all) and stopped after it."""

    address: str | None = None
    num_cpus: int | None = None
    progress: bool = False  # Ray Data's own progress bars
