"""Every credit estimator and a full recipe → (B, T) token tensor, vs the memory-bound floor and the
references, across batch sizes.

Run: ``.venv/bin/python benchmarks/bench_estimators.py`` (all sizes, one run; a few minutes on 2
cores). ``--quick``: two tiny sizes, one repeat, no peak-memory subprocesses, no plot (a smoke test);
``--json PATH``: also write every figure as JSON; ``--plot PATH``: where the log-log scaling plot goes
(default ``benchmarks/scaling.png``; none with ``--quick`` unless given).

Inputs: a verl-layout multi-turn batch at each size (B, T), built once with ``from_trainer_tensors``:
rows of 2–6 model turns separated by tool outputs (``response_mask`` 0); every turn but the last ends
in a tool call ``<tool_call> body </tool_call>`` (located by its open / close token patterns) whose
body is fixed by the turn and the action taken, so calls repeat within a task; 0/1 outcome on the last
generated token (``token_level_rewards``); sparse per-step rewards; per-step integer ``state`` = the
turn and the previous action, so GiGPO's anchor states repeat within a group; group size 8, uuid-string
``index``. Calls are then named by their token ids (``name_calls``), and the columns a trainer holds
beside the tensors are added: ``call_ok`` (90% of calls ran), a stated ``confidence`` per row, a PRM
score per step. The tree batch is the same tensors with ``tree`` ids (2 trees × 4 leaves per task) and
``state`` = tree node: each tree's first leaf is the initial chain and the other leaves branch off it
at a random turn (Tree-GRPO with one expansion round), sharing the chain's nodes before the branch.
None of that preparation is timed; ``build`` times the ``from_trainer_tensors`` call alone.

Methods, each timed in this one process: one warm-up call each, then 7 rounds, each round calling every
method once in turn (so a burst of load from other processes hits one round of every method, not
all the repeats of one); the median per method. Every stepcredit call starts cold (the batch's
cached indices are dropped first, as on a freshly built batch):

* ``floor``: ``scores[:, None] * mask`` (float32 mask, scores summed beforehand) — one read of the
  mask, one write of the (B, T) output;
* ``floor, reused output``: the same into an output allocated once beforehand (no page faults of a
  fresh output): what recycling outputs could save at most;
* ``verl loop`` / ``verl vectorized``: verl 0.9.1's ``compute_grpo_outcome_advantage`` and
  ``compute_grpo_vectorized_outcome_advantage`` (outcome only, from the raw tensors);
* every registered credit component that applies to a trainer batch, as
  ``component(rollouts, **params).to_tokens(rollouts)`` with the built-in recipes' parameters (tree
  estimators on the tree batch);
* ``full recipe``: ``Recipe`` with selection ``binary_gate`` + ``resample_on_correct`` (keep 6 of the
  group of 8) and credit ``gigpo`` + ``toolpo``, then ``to_tokens`` on the kept rows;
* ``gigpo oracle (loop, steps)``: the loop reference of ``tests/support/estimator_oracles.py`` (dicts over
  Python floats), smallest size only, at the steps level (no tokens), beside ``gigpo (steps)``, the
  same estimator without the token broadcast; their max |diff| is printed.
* ``build``: ``from_trainer_tensors`` with the call patterns, step rewards and states.

Peak memory (largest size only): each method runs again in a fresh subprocess; the figure is the peak
resident memory above what the batch already held (``VmHWM`` reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timing import FULL_RECIPE, interleaved_ms, peak_extra_bytes, reference, uid_index, uncached

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [(1024, 1024), (1024, 4096), (8192, 1024), (8192, 4096)]
QUICK_SIZES = [(64, 256), (128, 512)]
GROUP = 8
LEAVES = 4  # leaves per tree: 2 trees per group of 8
OPEN, CLOSE = 5, 6  # tool-call marker ids in the synthetic vocabulary
BODY = 12  # tokens between the markers
ACTIONS = 3  # actions per turn; the next turn's anchor state is (turn, previous action)
PLOT = Path(__file__).resolve().parent / "scaling.png"
ROUNDS = 7  # timed rounds per size (--quick: 1)

# credit components: name → (batch, params); params as in src/stepcredit/recipes/*.yaml where a
# built-in recipe uses the component, else the defaults
COMPONENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("chain", {"norm": "std"}),
    "rloo": ("chain", {}),
    "reinforce_pp_baseline": ("chain", {"weighting": "auto"}),
    "ms_grpo": ("chain", {"norm": "std"}),
    "gigpo": ("chain", {"step_weight": 1.0, "mode": "mean_norm", "gamma": 0.95}),
    "mt_grpo": ("chain", {"turn_reward": "tool_ok", "turns": "first"}),
    "mt_grpo, per_index": ("chain", {"turns": "per_index"}),
    "mt_grpo, per_trajectory": ("chain", {"turns": "per_trajectory"}),
    "per_turn": ("chain", {}),
    "per_turn_index": ("chain", {}),
    "step_grpo": ("chain", {"key": "position"}),
    "prm_step": ("chain", {}),
    "brier": ("chain", {"source": "column"}),
    "toolpo": ("chain", {"correct": "tool_ok", "norm": "mean"}),
    "action_anchor": ("chain", {"prior_strength": 1.0, "leave_one_out": True}),
    "call_consensus": ("chain", {}),
    "call_evidence": ("chain", {}),
    "tree_grpo": ("tree", {"prefix": "sum"}),
    "treerl": ("tree", {}),
    "treepo": ("tree", {}),
}
SKIPPED = {
    "oracle": "reads ground-truth step labels (the label column), which a training batch does not have: "
    "the audit's upper bound, not a method",
}
REFERENCES = ["floor", "floor, reused output", "verl loop", "verl vectorized"]
ORACLE = ["gigpo oracle (loop, steps)", "gigpo (steps)"]


def methods() -> list[str]:
    """Every method of the table, in its order (the oracle rows run at the smallest size only)."""
    return [*REFERENCES, *COMPONENTS, "full recipe", *ORACLE, "build"]


# ------------------------------------------------------------------------------------------- batch
@dataclass
class Batch:
    b: int
    t: int
    mask: torch.Tensor  # (B, T) float32, as a trainer holds it
    rewards: torch.Tensor  # (B, T) float32: 0/1 outcome on the last generated token
    responses: torch.Tensor  # (B, T) int64 token ids
    index: np.ndarray  # (B,) uuid strings
    step_rewards: torch.Tensor  # [S]
    state: torch.Tensor  # [S] anchor states (turn, previous action)
    node: torch.Tensor  # [S] tree nodes
    tree: np.ndarray  # (B,) tree ids
    chain: Any = None  # Rollouts
    trees: Any = None  # Rollouts

    def build(self, *, trees: bool = False) -> Any:
        """``from_trainer_tensors`` of the batch: chains (per-step states), or with ``trees`` the tree
        ids and the tree nodes as states."""
        from stepcredit.io import from_trainer_tensors

        return from_trainer_tensors(
            self.mask,
            self.index,
            token_level_rewards=self.rewards,
            responses=self.responses,
            tool_call_start=[OPEN],
            tool_call_end=[CLOSE],
            step_rewards=self.step_rewards,
            state=self.node if trees else self.state,
            tree=self.tree if trees else None,
        )


def make_batch(b: int, t: int, seed: int = 0) -> Batch:
    """The synthetic trainer batch of the module doc, and its chain and tree ``Rollouts``."""
    rng = np.random.default_rng(seed)
    responses = rng.integers(10, 200, size=(b, t), dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.float32)
    rewards = np.zeros((b, t), dtype=np.float32)
    bodies = rng.integers(10, 200, size=(64, BODY))
    states: list[int] = []
    nodes: list[int] = []
    chain_nodes: list[int] = []
    next_node = 0
    for i in range(b):  # building the synthetic input, not timed
        turns = int(rng.integers(2, 7))
        pos, prev, k = 0, 0, 0
        for k in range(turns):
            length = int(rng.integers(BODY + 4, max(BODY + 5, t // (2 * turns))))
            if pos + length > t:
                break
            mask[i, pos : pos + length] = 1
            states.append(k * (ACTIONS + 1) + (prev if k else ACTIONS))
            action = int(rng.integers(ACTIONS))
            if k < turns - 1:  # a tool call at the end of the turn, then the tool's output
                end = pos + length
                responses[i, end - BODY - 2] = OPEN
                responses[i, end - BODY - 1 : end - 1] = bodies[(k * ACTIONS + action) % 64]
                responses[i, end - 1] = CLOSE
            prev = action
            pos += length + int(rng.integers(8, 32))
        else:
            k = turns
        # tree nodes: leaf 0 of a tree is the chain, leaf j branches off it after `shared` turns
        if i % LEAVES == 0:
            chain_nodes = list(range(next_node, next_node + k))
            next_node += k
            nodes.extend(chain_nodes)
        else:
            shared = min(int(rng.integers(1, k)) if k > 1 else 0, len(chain_nodes))
            nodes.extend(chain_nodes[:shared])
            nodes.extend(range(next_node, next_node + k - shared))
            next_node += k - shared
        last = int(np.flatnonzero(mask[i])[-1])
        rewards[i, last] = float(rng.random() < 0.5)
    s = len(states)
    batch = Batch(
        b,
        t,
        torch.from_numpy(mask),
        torch.from_numpy(rewards),
        torch.from_numpy(responses),
        uid_index(b, GROUP, rng),
        torch.from_numpy(np.where(rng.random(s) < 0.05, -0.5, 0.0).astype(np.float32)),
        torch.tensor(states, dtype=torch.int64),
        torch.tensor(nodes, dtype=torch.int64),
        np.arange(b) // LEAVES,
    )
    from stepcredit.integrations.calls import name_calls

    chain = name_calls(batch.build(), batch.responses, "tokens")
    c = chain.num_calls
    confidence = rng.random(b).astype(np.float32)
    confidence[rng.random(b) < 0.1] = np.nan  # no confidence stated
    extra = {
        "call_ok": torch.from_numpy(np.where(rng.random(c) < 0.9, 1, 0).astype(np.int8)),
        "tool_ok": None,  # derived from call_ok again
        "confidence": torch.from_numpy(confidence),
        "prm": torch.from_numpy(rng.random(s).astype(np.float32)),
    }
    batch.chain = replace(chain, **extra)
    trees = batch.build(trees=True)
    batch.trees = replace(name_calls(trees, batch.responses, "tokens"), **extra)
    return batch


# ------------------------------------------------------------------------------------------ methods
def method(name: str, batch: Batch) -> Callable[[], object]:
    """A zero-argument callable that runs ``name`` once on ``batch``."""
    if name in REFERENCES:
        return reference(name, batch.rewards, batch.mask, batch.index)
    if name == "build":
        return batch.build
    if name == "full recipe":
        from stepcredit.recipe import Recipe

        recipe = Recipe.from_dict(FULL_RECIPE)

        def run_recipe() -> object:
            res = recipe.run(uncached(batch.chain))
            return res.credit.to_tokens(res.rollouts)

        return run_recipe
    if name == ORACLE[0]:
        from tests.support.estimator_oracles import gigpo_oracle

        kw = dict(step_weight=1.0, mode="mean_norm", gamma=0.95, eps=1e-6, episode_weighting="steps")
        return lambda: gigpo_oracle(batch.chain, **kw)
    if name == ORACLE[1]:
        from stepcredit.estimators import gigpo

        return lambda: gigpo(uncached(batch.chain)).per_step(batch.chain)
    import stepcredit.estimators  # noqa: F401 - registers the credit components (imports are lazy)
    from stepcredit.core.registry import REGISTRY

    fn = REGISTRY["credit"][name.split(",")[0]].fn  # "mt_grpo, per_index": a component with parameters
    which, params = COMPONENTS[name]
    r = batch.chain if which == "chain" else batch.trees
    return lambda: fn(uncached(r), **params).to_tokens(r)


def checks(batch: Batch) -> dict[str, float]:
    """Agreement with the loop references on ``batch`` (max |diff|); the tree batch must be a tree."""
    from tests.support.estimator_oracles import gigpo_oracle, tree_grpo_loop, treepo_loop, treerl_loop

    from stepcredit.estimators import gigpo, tree_grpo, treepo, treerl

    r, tr = batch.chain, batch.trees
    kw = dict(step_weight=1.0, mode="mean_norm", gamma=0.95, eps=1e-6, episode_weighting="steps")
    out = {"gigpo vs gigpo_oracle": float((gigpo(r).per_step(r).double() - gigpo_oracle(r, **kw)).abs().max())}
    out["tree_grpo vs loop"] = float((tree_grpo(tr).trajectory - tree_grpo_loop(tr)).abs().max())
    out["treerl vs loop"] = float((treerl(tr).per_step(tr) - treerl_loop(tr)).abs().max())
    out["treepo vs loop"] = float((treepo(tr, weighting="trajectories").trajectory - treepo_loop(tr)).abs().max())
    for key, diff in out.items():
        assert diff < 1e-4, (key, diff)
    return out


# ------------------------------------------------------------------------------------- peak memory
def peak_one(name: str, b: int, t: int) -> None:
    """Subprocess body: print the peak extra resident memory of one call of ``name``."""
    torch.set_num_threads(2)
    method(name, make_batch(64, 256, seed=1))()  # lazy imports and first-call set-up, off the books
    batch = make_batch(b, t)
    fn = method(name, batch)
    print(json.dumps({"peak_extra": peak_extra_bytes(fn)}))


def peak_mib(name: str, b: int, t: int, tries: int = 2) -> float:
    for attempt in range(1, tries + 1):
        out = subprocess.run([sys.executable, __file__, "--peak", name, str(b), str(t)], capture_output=True, text=True)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra"] / 2**20
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        print(f"peak subprocess for {name!r} failed (exit {out.returncode}, try {attempt}):\n{tail}", file=sys.stderr)
    raise RuntimeError(f"peak subprocess for {name!r} failed {tries} times")


# ------------------------------------------------------------------------------------------ output
def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def table(rows: list[dict[str, Any]], sizes: list[tuple[int, int]]) -> list[str]:
    """One line per method; per size its median ms and × floor; peak extra MiB at the largest size."""
    at = {(r["method"], r["B"], r["T"]): r for r in rows}
    big = sizes[-1]
    head = ["method", "batch"]
    align = ["---", "---"]
    for b, t in sizes:
        head += [f"{b}×{t} ms", "× floor"]
        align += ["---:", "---:"]
    head.append(f"peak extra MiB ({big[0]}×{big[1]})")
    align.append("---:")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for name in methods():
        cells = [name, batch_of(name)]
        for b, t in sizes:
            r = at.get((name, b, t))
            cells += [_fmt_ms(r["median_ms"]), f"{r['x_floor']:.2f}"] if r else ["–", "–"]
        r = at.get((name, *big))
        cells.append(f"{r['peak_mib']:.0f}" if r and r.get("peak_mib") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def batch_of(name: str) -> str:
    if name in COMPONENTS:
        return COMPONENTS[name][0]
    if name in REFERENCES:
        return "tensors"
    if name == "build":
        return "tensors → chain"
    return "chain"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Log-log: median ms vs tokens B·T, one line per method, the floor in bold black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 7))
    names = [n for n in methods() if n != "floor"]
    cmap = plt.get_cmap("turbo")
    styles, markers = ["-", "--", "-.", ":"], "osD^vP*X"
    for k, name in enumerate(["floor", *names]):
        pts = sorted((r["B"] * r["T"], r["median_ms"]) for r in rows if r["method"] == name)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        if name == "floor":
            ax.plot(xs, ys, "k-", lw=3, marker="o", label="floor (scores[:, None] * mask)", zorder=5)
        else:
            color = cmap(0.05 + 0.9 * (k - 1) / max(len(names) - 1, 1))
            ax.plot(xs, ys, styles[k % 4], color=color, marker=markers[k % 8], ms=4, lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({(r["B"], r["T"]) for r in rows}, key=lambda s: s[0] * s[1])
    ax.set_xticks([b * t for b, t in sizes], [f"{b}×{t}\n{b * t / 2**20:.3g}M" for b, t in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch B×T, tokens in the batch B · T (log scale)")
    ax.set_ylabel("median ms (2 threads)")
    ax.set_title("credit → (B, T) advantages: time vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tiny sizes, one repeat, no peaks, no plot")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--plot", type=Path, help=f"the scaling plot (default {PLOT.name}; none with --quick)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sizes = QUICK_SIZES if args.quick else SIZES
    plot_path = args.plot if args.plot is not None else (None if args.quick else PLOT)

    from stepcredit.core.registry import REGISTRY

    missing = sorted(set(REGISTRY["credit"]) - set(COMPONENTS) - set(SKIPPED))
    assert not missing, f"credit components neither benched nor skipped: {missing}"

    rows: list[dict[str, Any]] = []
    found: dict[str, float] = {}
    described = ""
    for n_size, (b, t) in enumerate(sizes):
        batch = make_batch(b, t)
        chain = batch.chain
        if n_size == 0:
            found = checks(batch)
        described += (
            f"\n* B={b}, T={t}: {chain.num_steps} steps, {chain.num_calls} tool calls, "
            f"{int(batch.mask.sum())} generated tokens ({float(batch.mask.mean()):.0%} of B·T); "
            f"tree batch: {batch.trees.decision_points[1]} nodes"
        )
        names = [n for n in methods() if n not in ORACLE or n_size == 0]
        timed = interleaved_ms({name: method(name, batch) for name in names}, 1 if args.quick else ROUNDS)
        floor_ms = timed["floor"]
        for name in names:
            ms = timed[name]
            peak = peak_mib(name, b, t) if not args.quick and n_size == len(sizes) - 1 else None
            rows.append(
                {"B": b, "T": t, "tokens": b * t, "method": name, "batch": batch_of(name), "median_ms": ms,
                 "x_floor": ms / floor_ms, "peak_mib": peak}
            )
            extra = "" if peak is None else f"  peak +{peak:7.1f} MiB"
            print(f"B={b:5d} T={t:5d} {name:28s} {ms:10.2f} ms  {ms / floor_ms:7.2f}× floor{extra}", file=sys.stderr)
        del batch, chain
    if plot_path is not None:
        plot(rows, plot_path)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; group size "
        f"{GROUP}; {'--quick, ' if args.quick else ''}median of {1 if args.quick else ROUNDS} rounds after a "
        f"warm-up, each round timing every method once in turn. Batches:{described}"
    )
    print(
        f"\nAgreement at B={sizes[0][0]}, T={sizes[0][1]} (max |diff|): "
        + ", ".join(f"{k} {v:.1e}" for k, v in found.items())
    )
    print(
        "\nNot benched: " + "; ".join(f"`{k}`: {v}" for k, v in SKIPPED.items()) + ". Columns added beside "
        "the tensors: `call_ok` (toolpo, mt_grpo, call_evidence, the recipe's resample_on_correct), "
        "`confidence` (brier, source=column), `prm` (prm_step); calls named by their token ids."
    )
    print()
    print("\n".join(table(rows, sizes)))
    slowest = max((r for r in rows if r["B"] * r["T"] == max(b * t for b, t in sizes)), key=lambda r: r["x_floor"])
    print(
        f"\nSlowest at the largest size: `{slowest['method']}`, {slowest['x_floor']:.1f}× the floor."
        + (f" Plot: `{plot_path.name}`." if plot_path is not None else "")
    )
    if args.json is not None:
        finite = all(math.isfinite(r["median_ms"]) for r in rows)
        args.json.write_text(
            json.dumps(
                {
                    "sizes": [list(s) for s in sizes],
                    "quick": args.quick,
                    "methods": methods(),
                    "rows": rows,
                    "skipped": SKIPPED,
                    "checks": found,
                    "finite": finite,
                    "plot": None if plot_path is None else str(plot_path),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--peak":
        peak_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
