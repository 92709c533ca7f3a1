"""Rollout throughput, the token budget of Tree-GRPO trees vs chains, and the time of one RL step.

Run: ``.venv/bin/python benchmarks/bench_rollout.py`` (~4 minutes on 2 cores: the warm start is most
of it). Prints Markdown tables (pasted into ``benchmarks/RESULTS.md``).

1. Scripted noisy oracle (no model): trajectories/s of the engine + environments, per family.
2. The tiny HF policy (the trainer's default model: Qwen2-style, hidden 64, 2 layers, tokenizer trained
   on the env's text) on the default experiment's task (calculator chains, depth 3, scratchpad), at
   equal trajectory counts: 16 tasks × 8 chains vs 16 tasks × Tree-GRPO trees M=2, N=3, L=1 (8 leaves
   per task). Trajectories/s, generated tokens/s, generated tokens per kept trajectory, and the share of
   the kept trajectories' tokens that were generated once for several leaves. Twice: the randomly
   initialised model (long, malformed actions) and the warm-started one (what RL samples from).
3. One RL step of the trainer (grpo, call_consensus, tree_grpo on trees) after the warm start:
   seconds for generation / credit / update (forward + backward + AdamW), median of 3 steps.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepcredit.envs import env_factory
from stepcredit.generation import NoisyOracle, rollout_chains, rollout_trees
from stepcredit.recipe import Recipe
from stepcredit.train import build_policy, rl_step, warm_start
from stepcredit.train.experiment import load_experiment

TASKS = 16


def scripted() -> None:
    print("| family | trajectories | steps | seconds | trajectories/s |")
    print("|---|---:|---:|---:|---:|")
    for family in ("calculator", "lookup", "booking"):
        make = env_factory(family)
        t = time.perf_counter()
        batch = rollout_chains(make, NoisyOracle(0.15, seed=0), range(128), group_size=8, seed=0)
        dt = time.perf_counter() - t
        r = batch.rollouts
        print(f"| {family} | {r.num_trajectories} | {r.num_steps} | {dt:.2f} | {r.num_trajectories / dt:.0f} |")


def chains_vs_trees(policy: object, config: object, label: str) -> None:
    make = config.make_env("train")  # type: ignore[attr-defined]
    fmt = policy.format  # type: ignore[attr-defined]
    rows = []
    for kind in ("chains", "trees"):
        policy.reseed(0)  # type: ignore[attr-defined]
        t = time.perf_counter()
        if kind == "chains":
            batch = rollout_chains(make, policy, range(TASKS), group_size=8, chat_format=fmt, seed=0)  # type: ignore[arg-type]
        else:
            batch = rollout_trees(make, policy, range(TASKS), trees=2, expand=3, iterations=1, chat_format=fmt,  # type: ignore[arg-type]
                                  seed=0)
        dt = time.perf_counter() - t
        r = batch.rollouts
        assert r.response_mask is not None
        in_batch = int(r.response_mask.sum())
        rows.append((kind, r.num_trajectories, dt, batch.generated_tokens, batch.tokens_per_trajectory, in_batch,
                     batch.success_rate))
    print(f"\n{label}\n")
    print("| rollouts | trajectories | seconds | trajectories/s | generated tokens | tokens/s | generated tokens "
          "per kept trajectory | tokens in the batch | success |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, n, dt, gen, per, in_batch, success in rows:
        print(f"| {kind} | {n} | {dt:.1f} | {n / dt:.1f} | {gen} | {gen / dt:.0f} | {per:.1f} | {in_batch} | "
              f"{100 * success:.0f}% |")
    print(f"\ntrees / chains, generated tokens per kept trajectory: {rows[1][4] / rows[0][4]:.2f}")


def rl_steps(policy: object, config: object) -> None:
    import dataclasses

    print("\n| recipe | rollouts | generation s | credit s | update s | credit share |")
    print("|---|---|---:|---:|---:|---:|")
    warm = {k: v.clone() for k, v in policy.model.state_dict().items()}  # type: ignore[attr-defined]
    for recipe, rollout in (("grpo", "chains"), ("call_consensus", "chains"), ("tree_grpo", "trees")):
        policy.model.load_state_dict(warm)  # type: ignore[attr-defined]
        cfg = dataclasses.replace(config, recipe=recipe, rollout=rollout)  # type: ignore[type-var]
        optimizer = torch.optim.AdamW(policy.model.parameters(), lr=cfg.lr)  # type: ignore[attr-defined]
        times = []
        for step in range(1, 4):
            metrics, _ = rl_step(policy, None, optimizer, Recipe.load(recipe), cfg, step)
            times.append((metrics["time_generate"], metrics["time_credit"], metrics["time_update"]))
        g, c, u = (statistics.median(t[i] for t in times) for i in range(3))
        print(f"| {recipe} | {rollout}, {int(metrics['trajectories'])} | {g:.2f} | {c:.4f} | {u:.2f} | "
              f"{100 * c / (g + c + u):.2f}% |")


def main() -> None:
    torch.set_num_threads(2)
    scripted()
    config = load_experiment(None).train
    policy = build_policy(config)
    chains_vs_trees(policy, config, "random initialisation")
    t = time.perf_counter()
    warm_start(policy, config)
    print(f"\nwarm start: {time.perf_counter() - t:.0f} s")
    chains_vs_trees(policy, config, "warm-started")
    rl_steps(policy, config)


if __name__ == "__main__":
    main()
