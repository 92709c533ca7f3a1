"""GRPO advantages → (B, T) token tensor: stepcredit vs verl 0.9.1 vs the memory-bound floor.

Run: ``.venv/bin/python benchmarks/bench_grpo.py`` (all sizes, one run; ~1 minute on 2 cores).

Inputs as in a verl batch: float32 ``token_level_rewards`` with the 0/1 outcome at the last valid
token, random response lengths in [1, T], float32 ``response_mask``, ``index`` an object array of
uuid strings, group size 8. Methods, each timed in this one process (median, after a warm-up):

* ``floor``: ``scores[:, None] * mask`` with ``scores`` summed beforehand — one read of the mask, one
  write of the output;
* ``verl loop``: ``compute_grpo_outcome_advantage`` (verl's default ``grpo``);
* ``verl vectorized``: ``compute_grpo_vectorized_outcome_advantage``;
* ``stepcredit``: ``grpo(rollouts).to_tokens(rollouts)`` on a ``Rollouts`` built once from the batch
  (group statistics + broadcast under the stored boolean mask);
* ``stepcredit build``: ``from_trainer_tensors`` (steps from mask runs, groups from uids), the one-off
  cost of turning the trainer batch into ``Rollouts``, reported separately.

Peak memory: each method runs again in a fresh subprocess; the figure is the peak resident memory
above what the inputs already held (``VmHWM`` reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import torch

from timing import median_ms, peak_extra_bytes, reference, single_turn_batch  # benchmarks/timing.py

SIZES = [(1024, 1024), (1024, 4096), (8192, 1024), (8192, 4096)]
GROUP = 8
METHODS = ["floor", "verl loop", "verl vectorized", "stepcredit", "stepcredit build"]


def make_batch(b: int, t: int, seed: int = 0):
    return single_turn_batch(b, t, seed, GROUP)


def method(name: str, rewards: torch.Tensor, mask: torch.Tensor, index: np.ndarray) -> Callable[[], object]:
    if name == "floor" or name.startswith("verl"):
        return reference(name, rewards, mask, index)
    from stepcredit.estimators import grpo
    from stepcredit.io import from_trainer_tensors

    if name == "stepcredit build":
        return lambda: from_trainer_tensors(mask, index, token_level_rewards=rewards)
    rollouts = from_trainer_tensors(mask, index, token_level_rewards=rewards)
    return lambda: grpo(rollouts).to_tokens(rollouts)


def peak_one(name: str, b: int, t: int) -> None:
    """Subprocess body: print the peak extra resident memory of one call of ``name``."""
    torch.set_num_threads(2)
    rewards, mask, index = make_batch(b, t)
    fn = method(name, rewards, mask, index)
    print(json.dumps({"peak_extra": peak_extra_bytes(fn)}))


def peak_mib(name: str, b: int, t: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--peak", name, str(b), str(t)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra"] / 2**20


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for b, t in SIZES:
        rewards, mask, index = make_batch(b, t)
        for name in METHODS:
            fn = method(name, rewards, mask, index)
            ms = median_ms(fn, 5 if name == "verl loop" else 9)
            rows.append((b, t, name, ms, peak_mib(name, b, t)))
            print(f"B={b:5d} T={t:5d} {name:17s} {ms:9.2f} ms  peak +{rows[-1][4]:7.1f} MiB", file=sys.stderr)
    # agreement on the largest batch, so the table compares equal numbers
    from verl.trainer.ppo import core_algos

    from stepcredit.estimators import grpo
    from stepcredit.io import from_trainer_tensors

    rewards, mask, index = make_batch(*SIZES[-1])
    r = from_trainer_tensors(mask, index, token_level_rewards=rewards)
    diff = (grpo(r).to_tokens(r) - core_algos.compute_grpo_outcome_advantage(rewards, mask, index)[0]).abs().max()
    floor = {(b, t): ms for b, t, name, ms, _ in rows if name == "floor"}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"max |stepcredit − verl| at B={SIZES[-1][0]}, T={SIZES[-1][1]}: {float(diff):.2e}"
    )
    print()
    print("| B | T | method | median ms | × floor | peak extra MiB |")
    print("|---:|---:|---|---:|---:|---:|")
    for b, t, name, ms, mib in rows:
        print(f"| {b} | {t} | {name} | {ms:.2f} | {ms / floor[(b, t)]:.2f} | {mib:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--peak":
        peak_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
