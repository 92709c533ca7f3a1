"""Structural estimators vs their loop references, in one run.

Run: ``.venv/bin/python benchmarks/bench_structural.py`` (about a minute on 2 cores).

* GiGPO at 8,192 trajectories × 30 steps (1,024 tasks × 8): ``gigpo`` vs two loop references from
  ``tests/support/estimator_oracles.py``: the test oracle (dict loops over Python floats — faster than the
  reference code) and the same loops in the cost structure of verl-agent's
  ``compute_gigpo_outcome_advantage`` (per-row torch scalars, ``torch.mean``/``torch.std`` per group;
  without its token broadcast). Steps revisit anchor states (3 choices per step index), rewards are
  sparse.
* Trees at 1,024 tasks × 6 leaves (2 trees × 3 leaves) × 5 steps (``synthetic.make_tree_rollouts``):
  ``tree_grpo``, ``treerl``, ``treepo`` vs the loop oracles.
* The other step-level estimators on the GiGPO batch, as a ratio to ``grpo`` on the same batch.
Each method: median of repeats after a warm-up; loops are run 3 times. Outputs agree (checked here).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from timing import median_ms, uncached  # benchmarks/timing.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.estimator_oracles import (
    gigpo_oracle,
    gigpo_verl_agent_style,
    tree_grpo_loop,
    treepo_loop,
    treerl_loop,
)

from stepcredit import Rollouts
from stepcredit.core import Texts
from stepcredit.envs.synthetic import make_tree_rollouts
from stepcredit.estimators import (
    action_anchor,
    gigpo,
    grpo,
    mt_grpo,
    toolpo,
    tree_grpo,
    treepo,
    treerl,
)


def anchored_batch(tasks: int = 1024, group: int = 8, steps: int = 30, seed: int = 0) -> Rollouts:
    rng = np.random.default_rng(seed)
    n = tasks * group
    s = n * steps
    choice = rng.integers(0, 3, size=(n, steps))
    state = (np.arange(steps)[None, :] * 3 + choice).reshape(-1)  # shared within a task by construction
    reward = np.where(rng.random(s) < 0.05, -0.5, 0.0).astype(np.float32)
    calls = (rng.random(s) < 0.6).astype(np.int64)
    kind = np.where(calls > 0, 1, 0)
    kind.reshape(n, steps)[:, -1] = np.where(calls.reshape(n, steps)[:, -1] > 0, 1, 2)
    c = int(calls.sum())
    names = [f"tool{k}" for k in rng.integers(0, 5, size=c)]
    args = [f'{{"x":{k}}}' for k in rng.integers(0, 4, size=c)]
    return Rollouts(
        group=np.repeat(np.arange(tasks), group),
        outcome=(rng.random(n) < 0.5).astype(np.float32),
        step_offsets=np.arange(0, s + 1, steps),
        kind=kind,
        reward=reward,
        state=state,
        call_offsets=np.concatenate([[0], np.cumsum(calls)]),
        call_ok=np.where(rng.random(c) < 0.9, 1, 0),
        texts=Texts.create(n, tasks, s, c, call_name=names, call_arguments=args),
    )


def main() -> None:
    torch.set_num_threads(2)
    rows: list[tuple[str, str, float, float, float]] = []

    big = anchored_batch()
    kw = dict(step_weight=1.0, mode="mean_norm", gamma=0.95, eps=1e-6, episode_weighting="steps")
    got = gigpo(big).per_step(big).double()
    want = gigpo_oracle(big, **kw)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    fast = median_ms(lambda: gigpo(uncached(big)), 9)
    slow = median_ms(lambda: gigpo_oracle(big, **kw), 2)
    rows.append(
        ("gigpo vs loop oracle (Python floats)", "8192 traj × 30 steps", fast, slow, float((got - want).abs().max()))
    )
    # the same states as 64-bit hash keys (what the log loaders produce): the index needs two sorts
    hashed = replace(big, state=big.state * -7046029254386353131 + 1442695040888963407)
    assert torch.equal(gigpo(hashed).per_step(hashed), gigpo(big).per_step(big))
    rows.append(
        (
            "gigpo, 64-bit hashed states, vs loop oracle",
            "8192 traj × 30 steps",
            median_ms(lambda: gigpo(uncached(hashed)), 9),
            slow,
            float((got - want).abs().max()),
        )
    )
    styled = gigpo_verl_agent_style(big, **kw)
    slow_styled = median_ms(lambda: gigpo_verl_agent_style(big, **kw), 1)
    rows.append(
        (
            "gigpo vs verl-agent-style loop (torch scalars)",
            "8192 traj × 30 steps",
            fast,
            slow_styled,
            float((got - styled).abs().max()),
        )
    )

    trees = make_tree_rollouts(1024, trees_per_task=2, leaves_per_tree=3, depth=5, seed=0)
    for name, est, loop, view in (
        ("tree_grpo", tree_grpo, tree_grpo_loop, "trajectory"),
        ("treerl", treerl, treerl_loop, "per_step"),
        ("treepo", treepo, treepo_loop, "trajectory"),
    ):
        credit = est(trees)
        ours = credit.trajectory if view == "trajectory" else credit.per_step(trees)
        ref = loop(trees)
        diff = float((ours - ref).abs().max())
        assert diff < 1e-4, (name, diff)
        rows.append(
            (
                name,
                "1024 tasks × 6 leaves × 5 steps",
                median_ms(lambda e=est: e(uncached(trees)), 9),
                median_ms(lambda f=loop: f(trees), 2),
                diff,
            )
        )

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {big}; {trees}")
    print()
    print("| estimator | batch | stepcredit ms | loop reference ms | speed-up | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for name, batch, ms, ref_ms, diff in rows:
        print(f"| {name} | {batch} | {ms:.1f} | {ref_ms:.0f} | {ref_ms / ms:.0f}× | {diff:.1e} |")

    base = median_ms(lambda: grpo(big), 9)
    print()
    print("| estimator (8192 traj × 30 steps) | ms | × grpo |")
    print("|---|---:|---:|")
    for name, fn in (
        ("grpo", lambda: grpo(uncached(big))),
        ("gigpo", lambda: gigpo(uncached(big))),
        ("mt_grpo", lambda: mt_grpo(uncached(big))),
        ("toolpo", lambda: toolpo(uncached(big))),
        ("action_anchor", lambda: action_anchor(uncached(big))),
        ("tree_grpo (prefix=sum)", lambda: tree_grpo(uncached(big), prefix="sum")),
        ("treerl", lambda: treerl(uncached(big))),
        ("treepo", lambda: treepo(uncached(big))),
    ):
        ms = median_ms(fn, 7)
        print(f"| {name} | {ms:.1f} | {ms / base:.1f} |")


if __name__ == "__main__":
    main()
