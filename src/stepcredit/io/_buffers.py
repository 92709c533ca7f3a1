"""Recycled host buffers for the per-batch scan of trainer tensors.

``from_trainer_tensors`` runs on every training batch and writes a fresh ``(N, T)`` bool mask: on a
fresh buffer most of that cost is the kernel's page faults (1 per 4 KiB), not the writes. The mask is
an intermediate the trainer drops with the batch, so its buffer is recycled, as a caching allocator
would: a buffer goes back to the pool only when the last tensor or array viewing it is gone (the
storage of a tensor made by ``torch.from_numpy`` holds the array, so a weak reference to that array
tracks every view), and the scan overwrites every byte of a recycled buffer. The pool keeps at most
``KEEP`` buffers; the first batch of a run, or one of a new size, pays the faults.

Scratch blocks of the scan (a few MiB, never handed out) are pooled the same way.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

KEEP = 2  # free mask buffers kept
_lock = threading.Lock()
_free_masks: list[np.ndarray] = []
_free_scratch: dict[tuple[int, int], list[np.ndarray]] = {}


def _fresh_bool(size: int) -> np.ndarray:
    # torch's allocator, as for every other buffer (numpy's would ask the kernel for huge pages:
    # fewer page faults, but stalls for compaction when memory is fragmented)
    return torch.empty(size, dtype=torch.bool).numpy()


def mask_buffer(n: int, t: int) -> np.ndarray:
    """An ``(n, t)`` bool array of unspecified content, backed by a recycled buffer where one of
    ``n·t`` to ``2·n·t`` bytes is free. Every byte must be written before it is read."""
    size = n * t
    with _lock:
        fits = [k for k, b in enumerate(_free_masks) if size <= b.size <= 2 * size]
        base = _free_masks.pop(min(fits, key=lambda k: _free_masks[k].size)) if fits else None
    if base is None:
        base = _fresh_bool(size)
    arr = base[:size].reshape(n, t)
    done = weakref.finalize(arr, _give_mask, base)
    done.atexit = False
    return arr


def _give_mask(base: np.ndarray) -> None:
    with _lock:
        _free_masks.append(base)
        del _free_masks[:-KEEP]


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


def clear() -> None:
    """Drop every pooled buffer (tests; or to hand the memory back)."""
    with _lock:
        _free_masks.clear()
        _free_scratch.clear()
