"""Recycled host buffers for the ``(N, T)`` arrays made on every training batch.

A trainer pays, per batch, for a few ``(N, T)`` host arrays: the bool mask ``from_trainer_tensors``
scans into, and the token credit ``Credit.to_tokens`` returns. On a fresh buffer most of their cost
is the kernel's page faults (one per 4 KiB page, which the kernel zeroes first), not the writes: at
8192 × 4096 float32 a fresh output costs about twice a recycled one. Both arrays are dropped with the
batch, so their buffers are recycled, as a caching allocator would: a buffer goes back to the pool
only when the last tensor or array viewing it is gone (the storage of a tensor made by
``torch.from_numpy`` holds the array, so a finalizer on that array sees every view go), and the
callers write every element of a recycled buffer before reading it. The rows ``Rollouts.select``
copies and the marks of ``segments.spans_to_tokens`` use the pool too. The pool keeps at most
``KEEP`` free buffers, the most recently returned; the first batch of a run, or one of a new size,
pays the faults. ``stepcredit.release_buffers()`` hands the memory back. The arrays are handed out as
tensors of ``torch.from_numpy`` (which cannot be resized) and may sit on a buffer up to twice their
size.

Scratch blocks of the scan (a few MiB, never handed out) are pooled too (``take_scratch``).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import deque

import numpy as np
import torch

KEEP = 4  # free buffers kept: a batch's mask and token credit, and the next batch's
_lock = threading.Lock()
# Finalizers append here without the lock: one can run inside a garbage-collection pass anywhere,
# even while this thread holds the lock. ``recycled`` moves them into ``_free`` under the lock.
_returned: deque[np.ndarray] = deque(maxlen=KEEP)  # full: the oldest returned buffer is dropped
_free: list[np.ndarray] = []
_free_scratch: dict[tuple[int, int], list[np.ndarray]] = {}


def _forget_lock() -> None:
    global _lock
    _lock = threading.Lock()  # a fork while another thread held it would leave it held in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lock)


def _fresh(nbytes: int) -> np.ndarray:
    # torch's allocator, as for every other buffer (numpy's would ask the kernel for huge pages:
    # fewer page faults, but stalls for compaction when memory is fragmented)
    return torch.empty(nbytes, dtype=torch.uint8).numpy()


def recycled(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` with unspecified content: a free buffer of
    ``nbytes`` to ``2·nbytes`` bytes where the pool has one, else a fresh one. Every element must be
    written before it is read; the buffer returns to the pool when the array and every view of it
    (tensors of ``torch.from_numpy`` included) are gone."""
    kind = np.dtype(dtype)
    nbytes = math.prod(shape) * kind.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=kind)
    with _lock:
        _drain()
        fits = [k for k, b in enumerate(_free) if nbytes <= b.size <= 2 * nbytes]
        base = _free.pop(min(fits, key=lambda k: _free[k].size)) if fits else None
        del _free[:-KEEP]
    if base is None:
        base = _fresh(nbytes)
    # an array on a memoryview: every numpy view of it (and a torch.from_numpy tensor) keeps *it*
    # alive, where a view of ``base`` itself would keep only ``base``
    loan = np.frombuffer(base.data[:nbytes], dtype=kind)
    weakref.finalize(loan, _returned.append, base).atexit = False
    return loan.reshape(shape)


def recycled_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``recycled`` as a CPU tensor of a torch dtype numpy has (``torch.from_numpy``: not resizable)."""
    return torch.from_numpy(recycled(shape, torch.empty(0, dtype=dtype).numpy().dtype))


def _drain() -> None:
    """Move the returned buffers into ``_free`` (the lock held)."""
    while _returned:
        _free.append(_returned.popleft())


def take_scratch(rows: int, width: int) -> np.ndarray:
    """An all-False ``(rows, width)`` bool block; give it back with ``give_scratch``."""
    with _lock:
        free = _free_scratch.get((rows, width))
        if free:
            return free.pop()
    return torch.zeros((rows, width), dtype=torch.bool).numpy()


def give_scratch(block: np.ndarray) -> None:
    """Put a block from ``take_scratch`` back, reset to all-False."""
    block.fill(False)
    with _lock:
        free = _free_scratch.setdefault((block.shape[0], block.shape[1]), [])
        if len(free) < 8:
            free.append(block)


def free_buffers() -> int:
    """How many free buffers the pool holds (at most ``KEEP``)."""
    with _lock:
        _drain()
        del _free[:-KEEP]
        return len(_free)


def release_buffers() -> None:
    """Drop every pooled buffer, handing their memory back (``stepcredit.release_buffers``)."""
    with _lock:
        _returned.clear()
        _free.clear()
        _free_scratch.clear()
