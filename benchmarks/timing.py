"""The helpers every benchmark shares: timing, peak memory, the references and the verl batches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

FULL_RECIPE = {
    "name": "full recipe",
    "selection": [
        {"binary_gate": {}},
        {"resample_on_correct": {"keep": 6, "min_negatives": 2, "min_positives": 2, "seed": 0}},
    ],
    "credit": [
        {"gigpo": {"step_weight": 1.0, "mode": "mean_norm", "gamma": 0.95}},
        {"toolpo": {"correct": "tool_ok", "norm": "mean"}},
    ],
}
"""The issue's full recipe, as every benchmark runs it: gate + resample-on-correct (keep 6 of 8) +
GiGPO + ToolPO."""


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall ms of every callable over ``rounds`` rounds, each round calling every callable once
    in turn, after one warm-up call each (``median_ms`` in round-robin: a burst of load from
    another process on this shared machine lands on one round of every method, not on every repeat
    of one, so the ratios to the floor hold up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def memory_bytes(key: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` in bytes: ``VmRSS`` (resident now),
    ``VmHWM`` (the peak since start or since ``reset_peak``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident memory (Linux: ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """The peak resident memory of one call of ``fn`` above what the process held before it."""
    before = memory_bytes("VmRSS")
    reset_peak()
    out = fn()
    peak = memory_bytes("VmHWM")
    del out
    return max(peak - before, 0)


def reference(name: str, rewards: Any, mask: Any, index: Any) -> Callable[[], object]:
    """The references every GRPO-shaped benchmark compares with, on a verl batch (token-level rewards
    ``(B, T)``, float mask, uid ``index``): ``"floor"``, ``scores[:, None] * mask`` with the scores
    summed beforehand (one read of the mask, one write of the output); ``"verl loop"`` and
    ``"verl vectorized"``, verl 0.9.1's ``compute_grpo_outcome_advantage`` and
    ``compute_grpo_vectorized_outcome_advantage`` (they sum the rewards themselves); ``"floor, reused
    output"``, the floor written into one output buffer allocated beforehand, so without the page
    faults of a fresh one (what an allocator that recycles outputs could save at most)."""
    if name == "floor":
        scores = rewards.sum(-1)
        return lambda: scores[:, None] * mask
    if name == "floor, reused output":
        import torch

        scores = rewards.sum(-1)
        out = scores[:, None] * mask  # its pages faulted in once, here
        return lambda: torch.mul(scores[:, None], mask, out=out)
    from verl.trainer.ppo import core_algos

    fn = {
        "verl loop": core_algos.compute_grpo_outcome_advantage,
        "verl vectorized": core_algos.compute_grpo_vectorized_outcome_advantage,
    }[name]
    return lambda: fn(rewards, mask, index)


def uid_index(b: int, group: int, rng: Any) -> Any:
    """verl's ``index``: an object array of uuid strings, one per task, repeated for its ``group``
    consecutive rows (``b // group`` tasks; ``rng`` a numpy Generator)."""
    import uuid

    import numpy as np

    uids = np.array([str(uuid.UUID(int=int(rng.integers(2**62)))) for _ in range(b // group)], dtype=object)
    return np.repeat(uids, group)


def single_turn_batch(b: int, t: int, seed: int = 0, group: int = 8) -> tuple[Any, Any, Any]:
    """A single-turn verl batch ``(token_level_rewards, response_mask, index)``: float32, one run of
    ``mask == 1`` per row of random length in ``[1, T]``, the 0/1 outcome on its last token."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), lengths - 1] = (torch.rand(b, generator=g) < 0.5).float()
    return rewards, mask, uid_index(b, group, np.random.default_rng(seed))


def uncached(r: Any) -> Any:
    """``r`` without the derived indices a ``Rollouts`` caches (step → trajectory maps, decision
    points, …), so a timed call pays for them as the first call on a freshly built batch does."""
    import functools

    from stepcredit import Rollouts

    for name, value in vars(Rollouts).items():
        if isinstance(value, functools.cached_property):
            r.__dict__.pop(name, None)
    return r
