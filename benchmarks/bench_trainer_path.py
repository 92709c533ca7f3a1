"""What a trainer pays per batch, from its tensors to the ``(B, T)`` advantage, as a multiple of the floor.

Run: ``.venv/bin/python benchmarks/bench_trainer_path.py`` (B=8192, T=4096; ~3 minutes on 2 cores with
the memory column, ``--no-peak`` to skip it; ``--json PATH`` also writes the rows as JSON; ``--size B T``
another size).

Two verl-layout batches, group size 8, ``index`` an object array of uuid strings, float32
``response_mask`` and ``token_level_rewards`` (the 0/1 outcome on the last valid token):

* **single-turn**: as ``bench_grpo.py``: one run of ``response_mask == 1`` per row, random lengths in [1, T];
* **multi-turn**: 5–10 model turns per row separated by tool outputs (``response_mask == 0``) over a
  random response length in [T/2, T]; every turn but the last ends in a tool call
  ``<tool_call> body </tool_call>`` (one-token markers, one of 64 bodies), found through
  ``responses`` + ``tool_call_start/end``; per-step decision-point ``state`` keys revisited within a
  group (turn index × 3 choices, GiGPO's anchor states) and sparse per-step rewards.

Methods, all timed in this one process (``interleaved_ms``: 15 rounds after a warm-up, each round
calling every method once in turn, the median per method — a burst of load lands on one round of every
method rather than on every repeat of one; every repeat does the full work on the same inputs: nothing
is cached between repeats but the mask buffer named below, and the derived indices a prebuilt
``Rollouts`` caches — ``step_traj``, decision points, … — are dropped before each one), torch on 2
threads:

* ``floor``: ``scores[:, None] * mask`` with ``scores`` the per-row outcome summed beforehand — one read
  of the float mask, one write of the output; every ratio is to this, measured on the same batch;
* ``floor, reused output``: the same into an output buffer allocated once beforehand (no page faults
  of a fresh output; no target): what recycling outputs could save at most;
* ``trainer path: grpo``: ``from_trainer_tensors(mask, index, token_level_rewards=...)`` (steps from
  mask runs, groups from uids, validation; what verl's registered ``stepcredit_grpo`` passes) +
  ``Recipe.builtin("grpo").run`` + ``to_tokens`` (target ≤ 2× floor); every call allocates its mask
  and its output afresh, as every batch of a training loop does;
* ``build``: that ``from_trainer_tensors`` alone, and on the multi-turn batch also with its tool calls
  (``responses`` + markers), ``state`` keys and step rewards (no target; reported for the full recipe);
* ``<estimator> + to_tokens``: every trajectory-level credit component (one value per trajectory) on
  a ``Rollouts`` built once from the batch (target ≤ 1.5×);
* ``full recipe``: ``timing.FULL_RECIPE`` (``binary_gate`` + ``resample_on_correct`` keep 6 of 8 +
  ``gigpo`` + ``toolpo``), then the full ``(B, T)`` layout with dropped rows zeroed, through the verl integration's path
  (``TrainerRows.token_advantages``), on a prebuilt ``Rollouts`` (its calls' ``call_ok`` set, 80% ok) —
  target ≤ 3× — and again including ``from_trainer_tensors`` (whose calls are of unknown outcome).

Peak memory: each method runs again in a fresh subprocess; the figure is the peak resident memory
above what the inputs (and a prebuilt ``Rollouts``) already held (``VmHWM`` reset through
``/proc/self/clear_refs``), as in ``bench_grpo.py`` (``timing.peak_extra_bytes``): the memory a call
needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from timing import (
    FULL_RECIPE,
    interleaved_ms,
    peak_extra_bytes,
    reference,
    single_turn_batch,
    uid_index,
    uncached,
)

B, T = 8192, 4096
GROUP = 8
OPEN, CLOSE = 5, 6  # one-token tool-call markers
REPEATS = 15
TRAJECTORY_LEVEL: list[tuple[str, dict[str, Any]]] = [
    ("grpo", {}),
    ("grpo", {"norm": "mean"}),  # dr_grpo
    ("grpo", {"norm": "none"}),
    ("grpo", {"singleton": "zero"}),
    ("rloo", {}),
    ("reinforce_pp_baseline", {}),
    ("ms_grpo", {}),
    ("brier", {}),
    ("tree_grpo", {}),
    ("treepo", {}),
]


def single_turn(b: int, t: int, seed: int = 0) -> dict[str, Any]:
    """``bench_grpo.py``'s batch (``timing.single_turn_batch``)."""
    rewards, mask, index = single_turn_batch(b, t, seed, GROUP)
    return {"mask": mask, "rewards": rewards, "index": index}


def multi_turn(b: int, t: int, seed: int = 0) -> dict[str, Any]:
    """Rows of 5–10 model turns separated by tool outputs; calls at the end of every turn but the last."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 200, size=(b, t)).astype(np.int64)
    mask = np.zeros((b, t), dtype=np.float32)
    rewards = np.zeros((b, t), dtype=np.float32)
    bodies = rng.integers(10, 200, size=(64, 12))
    states: list[int] = []
    for i in range(b):  # building the synthetic input, not timed
        turns = int(rng.integers(5, 11))
        length = int(rng.integers(t // 2, t + 1))
        share = length / turns
        pos = 0
        for k in range(turns):
            gen = max(16, int(share * 0.75 * rng.uniform(0.5, 1.5)))
            if pos + gen > t:
                break
            mask[i, pos : pos + gen] = 1
            states.append(3 * k + int(rng.integers(3)))
            if k < turns - 1:
                call = pos + gen - 14
                ids[i, call], ids[i, call + 1 : call + 13], ids[i, call + 13] = OPEN, bodies[rng.integers(64)], CLOSE
            pos += gen + max(4, int(share * 0.25 * rng.uniform(0.5, 1.5)))  # the tool output
            if pos >= t:
                break
        last = int(np.nonzero(mask[i])[0][-1])
        rewards[i, last] = float(rng.random() < 0.5)
    s = len(states)
    step_rewards = np.where(rng.random(s) < 0.1, 0.1, 0.0).astype(np.float32)
    return {
        "mask": torch.from_numpy(mask),
        "rewards": torch.from_numpy(rewards),
        "index": uid_index(b, GROUP, rng),
        "responses": torch.from_numpy(ids),
        "state": torch.tensor(states, dtype=torch.int64),
        "step_rewards": torch.from_numpy(step_rewards),
    }


def build(batch: dict[str, Any], *, calls: bool = True) -> Any:
    """``from_trainer_tensors`` of the batch; with ``calls`` (multi-turn) also its tool calls, states
    and step rewards."""
    from stepcredit.io import from_trainer_tensors

    if "responses" not in batch or not calls:
        return from_trainer_tensors(batch["mask"], batch["index"], token_level_rewards=batch["rewards"])
    return from_trainer_tensors(
        batch["mask"],
        batch["index"],
        token_level_rewards=batch["rewards"],
        responses=batch["responses"],
        tool_call_start=[OPEN],
        tool_call_end=[CLOSE],
        state=batch["state"],
        step_rewards=batch["step_rewards"],
    )


def with_call_outcomes(rollouts: Any, seed: int = 0) -> Any:
    """The batch with 80% of its calls run ok and the rest errored (so ToolPO's action part varies)."""
    g = torch.Generator().manual_seed(seed)
    ok = (torch.rand(rollouts.num_calls, generator=g) < 0.8).to(torch.int8)
    return replace(rollouts, call_ok=ok, tool_ok=None)


def full_recipe_tokens(recipe: Any, rollouts: Any) -> torch.Tensor:
    """The recipe's credit on the full ``(B, T)`` layout, rows a selection dropped zeroed, as the verl
    integration returns it."""
    from stepcredit.integrations.rows import TrainerRows

    batch = TrainerRows.from_rows(rollouts)
    result = recipe.run(batch.rollouts)
    return batch.token_advantages(result.credit, result.kept, result.rollouts)


def methods(kind: str, batch: dict[str, Any]) -> dict[str, tuple[Callable[[], object], float | None]]:
    """name → (call, target × floor) for one batch; the prebuilt rollouts are made here, untimed."""
    from stepcredit.core.registry import get
    from stepcredit.recipe import Recipe

    grpo_recipe = Recipe.builtin("grpo")
    rollouts = build(batch)
    out: dict[str, tuple[Callable[[], object], float | None]] = {}
    for name in ("floor", "floor, reused output"):
        out[name] = (reference(name, batch["rewards"], batch["mask"], batch["index"]), None)

    def trainer_path() -> object:
        res = grpo_recipe.run(build(batch, calls=False))
        return res.credit.to_tokens(res.rollouts)

    out["trainer path: grpo (build + recipe + to_tokens)"] = (trainer_path, 2.0)

    out["build (from_trainer_tensors)"] = (lambda: build(batch, calls=False), None)
    if kind == "multi-turn":
        out["build with tool calls, states, step rewards"] = (lambda: build(batch), None)
    for name, params in TRAJECTORY_LEVEL:
        fn = get("credit", name).fn
        label = name + (f" {params}" if params else "") + " + to_tokens"

        def run(fn: Callable[..., Any] = fn, params: dict[str, Any] = params) -> object:
            r = uncached(rollouts)
            return fn(r, **params).to_tokens(r)

        out[label] = (run, 1.5)
    if kind == "multi-turn":
        recipe = Recipe.from_dict(FULL_RECIPE)
        prebuilt = with_call_outcomes(rollouts)
        out["full recipe: binary_gate + roc + gigpo + toolpo → (B, T)"] = (
            lambda: full_recipe_tokens(recipe, uncached(prebuilt)),
            3.0,
        )
        out["full recipe incl. from_trainer_tensors"] = (lambda: full_recipe_tokens(recipe, build(batch)), 3.0)
    return out


def make(kind: str, b: int, t: int) -> dict[str, Any]:
    return single_turn(b, t) if kind == "single-turn" else multi_turn(b, t)


def peak_one(kind: str, name: str, b: int, t: int) -> None:
    """Subprocess body: print the peak extra resident memory of one call of ``name``, after one call
    that loads what is imported lazily."""
    torch.set_num_threads(2)
    fn, _ = methods(kind, make(kind, b, t))[name]
    fn()
    print(json.dumps({"peak_extra": peak_extra_bytes(fn)}))


def peak_mib(kind: str, name: str, b: int, t: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--peak", kind, name, str(b), str(t)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra"] / 2**20


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    b, t = B, T
    if "--size" in argv:
        k = argv.index("--size")
        b, t = int(argv[k + 1]), int(argv[k + 2])
    peaks = "--no-peak" not in argv
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    rows: list[dict[str, Any]] = []
    counts = ""
    for kind in ("single-turn", "multi-turn"):
        batch = make(kind, b, t)
        if kind == "multi-turn":
            r = build(batch)
            counts = (f"multi-turn batch: {r.num_steps} steps ({r.num_steps / r.num_trajectories:.1f} per row), "
                      f"{r.num_calls} tool calls")
            del r
        found = methods(kind, batch)
        timed = interleaved_ms({name: fn for name, (fn, _) in found.items()}, REPEATS)
        floor = timed["floor"]
        for name, (_, target) in found.items():
            ms = timed[name]
            mib = peak_mib(kind, name, b, t) if peaks else None
            ratio = ms / floor
            rows.append({"batch": kind, "B": b, "T": t, "method": name, "ms": ms, "x_floor": ratio,
                         "target": target, "met": None if target is None else ratio <= target, "peak_extra_mib": mib})
            shown = "" if mib is None else f"  peak +{mib:7.1f} MiB"
            print(f"{kind:11s} {name:60s} {ms:9.2f} ms  {ratio:5.2f}× floor{shown}", file=sys.stderr)
        del batch, found
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; B={b}, T={t}, "
          f"group {GROUP}; {counts}")
    print()
    print("| batch | method | median ms | × floor | target | met? | peak extra MiB |")
    print("|---|---|---:|---:|---:|---|---:|")
    for row in rows:
        target = "" if row["target"] is None else f"≤ {row['target']:g}×"
        met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
        mib = "" if row["peak_extra_mib"] is None else f"{row['peak_extra_mib']:.0f}"
        cells = [row["batch"], row["method"], f"{row['ms']:.2f}", f"{row['x_floor']:.2f}", target, met, mib]
        print("| " + " | ".join(cells) + " |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--peak":
        peak_one(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main(sys.argv[1:])
