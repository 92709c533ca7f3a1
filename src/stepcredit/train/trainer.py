"""The trainer: a small HF policy learns tool use from credit (read top to bottom, CleanRL style).

    warm start   SFT on noisy-oracle demonstrations (the policy starts with a modest success rate
                 and with the mistakes of its teacher: failures come from a few wrong steps)
    RL step      rollouts (chains or Tree-GRPO trees, ``stepcredit.rollout``) on fresh train tasks
                 → recipe (shaping → selection → credit; any built-in name or YAML file)
                 → per-token advantages (``Credit.to_tokens``) → PPO-clip loss → AdamW
    evaluation   every ``eval_every`` steps: greedy success on held-out (test split) tasks
    bookkeeping  metrics as JSONL, checkpoints every ``checkpoint_every`` steps, ``resume=True``
                 continues from the last checkpoint and reproduces the metrics of an uninterrupted run

Every random choice derives from ``TrainConfig.seed`` *and the step number* (task indices, engine seed,
policy sampling stream), so a resumed run draws exactly what the uninterrupted run drew. Works on CPU
and CUDA (``device``), with the tiny local model (``model="tiny"``) or any HF causal LM folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.envs import env_factory
from stepcredit.recipe import Recipe
from stepcredit.rollout import NoisyOracle, RolloutBatch, rollout_chains, rollout_trees
from stepcredit.train.losses import AggMode, KLKind, entropy_from_logits, kl_penalty, masked_mean, ppo_clip_loss

__all__ = ["TrainConfig", "build_policy", "evaluate", "rl_step", "sequence_logprobs", "train", "update", "warm_start"]


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved beside its metrics)."""

    # environment
    env: str = "calculator"
    depth: int | None = None
    distractors: int = 0
    noise: float = 0.0
    max_steps: int | None = None
    env_options: dict[str, Any] = field(default_factory=dict)  # family-specific knobs, e.g. {"shape": "chain"}
    # model: "tiny" (built here, nothing downloaded) or a folder with a HF causal LM + tokenizer
    model: str = "tiny"
    hidden_size: int = 64
    num_layers: int = 2
    device: str = "cpu"
    # warm start: supervised fine-tuning on noisy-oracle demonstrations
    sft_demos: int = 1024
    sft_error_rate: float = 0.3
    sft_epochs: int = 25
    sft_batch: int = 32
    sft_lr: float = 5e-3
    # RL
    recipe: str = "grpo"
    rollout: Literal["chains", "trees"] = "chains"
    group_size: int = 8
    tree: tuple[int, int, int] = (2, 3, 1)  # Tree-GRPO M, N, L: 2·(1 + 3) = 8 leaves per task
    groups_per_step: int = 16
    steps: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float = 3.0
    loss_agg: AggMode = "token-mean"
    kl_coef: float = 0.0
    kl: KLKind = "k3"
    epochs: int = 1
    minibatches: int = 1
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    # evaluation and bookkeeping
    eval_every: int = 5
    eval_tasks: int = 64
    checkpoint_every: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the metrics file

    def check(self) -> TrainConfig:
        positive = ("group_size", "groups_per_step", "epochs", "minibatches", "max_new_tokens", "eval_every",
                    "eval_tasks", "checkpoint_every", "sft_batch", "hidden_size", "num_layers")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("steps", "sft_demos", "sft_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "sft_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.rollout not in ("chains", "trees"):
            raise ValueError(f"rollout must be 'chains' or 'trees', got {self.rollout!r}")
        if not 0.0 <= self.sft_error_rate <= 1.0:
            raise ValueError(f"sft_error_rate must be in [0, 1], got {self.sft_error_rate!r}")
        self.make_env("train")
        return self

    def make_env(self, split: Literal["train", "test"]) -> Callable[[], Any]:
        return env_factory(self.env, split=split, depth=self.depth, distractors=self.distractors, noise=self.noise,
                           max_steps=self.max_steps, **self.env_options)


# ----------------------------------------------------------------------------------------- policy
def build_policy(config: TrainConfig) -> Any:
    """The tiny local model (tokenizer trained on the env's text) or a HF model folder."""
    from stepcredit.rollout.hf import HFPolicy
    from stepcredit.rollout.tiny import tiny_policy

    kw: dict[str, Any] = {"temperature": config.temperature, "top_p": config.top_p,
                          "max_new_tokens": config.max_new_tokens, "seed": config.seed, "device": config.device}
    if config.model == "tiny":
        return tiny_policy((config.env,), hidden_size=config.hidden_size, num_layers=config.num_layers, **kw)
    return HFPolicy.from_pretrained(config.model, **kw)


def sequence_logprobs(
    model: Any,
    prompt_ids: list[list[int]],
    response_ids: Tensor,
    temperature: float,
    *,
    pad_id: int,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``log π(response token | prompt, earlier response)`` at ``temperature``, and the entropy of each
    next-token distribution, both ``(N, T)`` aligned with ``response_ids`` (garbage on padding: mask it).

    Each row is ``prompt + response`` right-padded; logits at position ``P_i − 1 + t`` predict response
    token ``t``. With ``mask`` (N, T) the columns after its last true one are not computed (0 there):
    a minibatch of short responses does not pay for the batch's longest."""
    device = next(model.parameters()).device
    n, full = response_ids.shape
    t = full
    if mask is not None:
        used = torch.nonzero(mask.any(dim=0))
        t = int(used.max()) + 1 if used.numel() else 1
    response_ids = response_ids[:, :t]
    lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    width = int(lengths.max()) + t
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    # prompts: one flat copy scattered to (row, position within the row); responses right after them
    rows = segments.segment_ids(torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]))
    cols = segments.ranges(torch.zeros_like(lengths), lengths)
    ids[rows, cols] = torch.tensor([token for p in prompt_ids for token in p], dtype=torch.long)
    ids.scatter_(1, lengths[:, None] + torch.arange(t)[None, :], response_ids)
    ids = ids.to(device)
    attention = torch.ones_like(ids)
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    if temperature > 0:
        logits = logits / temperature
    positions = (lengths[:, None] - 1 + torch.arange(t)[None, :]).to(device)  # (N, t)
    picked = logits.gather(1, positions[:, :, None].expand(n, t, logits.shape[-1]))  # (N, t, V)
    logp = torch.log_softmax(picked, dim=-1).gather(-1, response_ids.to(device)[:, :, None]).squeeze(-1)
    entropy = entropy_from_logits(picked.detach())
    if t < full:
        logp = torch.nn.functional.pad(logp, (0, full - t))
        entropy = torch.nn.functional.pad(entropy, (0, full - t))
    return logp, entropy


def _minibatches(n: int, parts: int, rng: np.random.Generator) -> Iterator[Tensor]:
    order = torch.from_numpy(rng.permutation(n))
    yield from (chunk for chunk in torch.tensor_split(order, parts) if chunk.numel())


# ------------------------------------------------------------------------------------ warm start
def warm_start(policy: Any, config: TrainConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """SFT on noisy-oracle demonstrations: cross-entropy on the generated (action) tokens only."""
    demos = rollout_chains(
        config.make_env("train"),
        NoisyOracle(config.sft_error_rate, seed=config.seed),
        range(10**9, 10**9 + config.sft_demos),  # task indices the RL steps never draw in practice
        group_size=1,
        chat_format=policy.format,
        seed=config.seed,
    )
    assert demos.response_ids is not None and demos.prompt_ids is not None
    mask = demos.rollouts.response_mask
    assert mask is not None
    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr)
    rng = np.random.default_rng([config.seed, 7])
    model.train()
    losses = []
    n = demos.rollouts.num_trajectories
    for _ in range(config.sft_epochs):
        for rows in _minibatches(n, max(1, math.ceil(n / config.sft_batch)), rng):
            m = mask[rows]
            logp, _ = sequence_logprobs(model, [demos.prompt_ids[i] for i in rows.tolist()],
                                        demos.response_ids[rows], 1.0, pad_id=policy.format.pad_id, mask=m)
            m = m.to(logp.device)
            loss = -masked_mean(logp, m)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    log(f"warm start: {n} demonstrations ({100 * demos.success_rate:.0f}% successful), final loss {losses[-1]:.3f}")
    return {"sft_loss": losses[-1], "sft_demo_success": demos.success_rate}


# ------------------------------------------------------------------------------------ evaluation
def evaluate(policy: Any, config: TrainConfig) -> float:
    """Greedy success rate on the first ``eval_tasks`` tasks of the held-out split."""
    saved = policy.temperature
    policy.temperature = 0.0
    try:
        batch = rollout_chains(config.make_env("test"), policy, range(config.eval_tasks), group_size=1,
                               chat_format=policy.format, seed=config.seed)
    finally:
        policy.temperature = saved
    return batch.success_rate


# ------------------------------------------------------------------------------------ one RL step
def rollouts_for_step(policy: Any, config: TrainConfig, step: int) -> RolloutBatch:
    """The step's rollouts on fresh train tasks; tasks, env seeds and sampling derive from (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    tasks = rng.integers(0, 10**9, size=config.groups_per_step).tolist()
    policy.reseed(config.seed * 1_000_003 + step)
    engine_seed = int(rng.integers(2**31))
    if config.rollout == "trees":
        m, n, iterations = config.tree
        return rollout_trees(config.make_env("train"), policy, tasks, trees=m, expand=n, iterations=iterations,
                             chat_format=policy.format, seed=engine_seed)
    return rollout_chains(config.make_env("train"), policy, tasks, group_size=config.group_size,
                          chat_format=policy.format, seed=engine_seed)


def update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    prompts: list[list[int]],
    responses: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_model: Any = None,
    seed: Sequence[int] = (0,),
) -> dict[str, float]:
    """PPO-clip on per-token advantages: ``epochs`` passes over ``minibatches`` random minibatches,
    each a forward pass (``sequence_logprobs``), the loss (+ ``kl_coef`` · KL to ``ref_model``), a
    clipped-gradient AdamW step. Returns the mean of each metric."""
    model, device = policy.model, policy.device
    stats: dict[str, list[float]] = {"loss": [], "clipfrac": [], "ppo_kl": [], "entropy": [], "kl": [], "grad_norm": []}
    rng = np.random.default_rng(list(seed))
    model.train()
    for _ in range(config.epochs):
        for rows in _minibatches(len(prompts), config.minibatches, rng):
            rows_list = rows.tolist()
            batch_prompts = [prompts[i] for i in rows_list]
            m = mask[rows]
            logp, entropy = sequence_logprobs(model, batch_prompts, responses[rows], config.temperature,
                                              pad_id=policy.format.pad_id, mask=m)
            m = m.to(device)
            loss, metrics = ppo_clip_loss(logp, old_logprobs[rows].to(device), advantages[rows].to(device), m,
                                          clip_low=config.clip_low, clip_high=config.clip_high,
                                          clip_c=config.clip_c, agg=config.loss_agg)
            if config.kl_coef > 0 and ref_model is not None:
                with torch.no_grad():
                    ref_logp, _ = sequence_logprobs(ref_model, batch_prompts, responses[rows], config.temperature,
                                                    pad_id=policy.format.pad_id, mask=m)
                kl = masked_mean(kl_penalty(logp, ref_logp, config.kl), m)
                loss = loss + config.kl_coef * kl
                stats["kl"].append(float(kl.detach()))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            stats["loss"].append(float(loss.detach()))
            stats["clipfrac"].append(metrics["clipfrac"])
            stats["ppo_kl"].append(metrics["ppo_kl"])
            stats["entropy"].append(float(masked_mean(entropy, m)))
            stats["grad_norm"].append(float(grad_norm))
    model.eval()
    return {k: float(np.mean(v)) for k, v in stats.items() if v}


def rl_step(
    policy: Any, ref_model: Any, optimizer: torch.optim.Optimizer, recipe: Recipe, config: TrainConfig, step: int
) -> tuple[dict[str, float], RolloutBatch]:
    """One RL step: rollouts → recipe → token advantages → ``update``. Timed by part."""
    t0 = time.perf_counter()
    batch = rollouts_for_step(policy, config, step)
    t1 = time.perf_counter()
    result = recipe.run(batch.rollouts)  # selection may drop trajectories: ``kept`` says which
    kept = result.kept
    advantages = result.credit.to_tokens(result.rollouts)
    t2 = time.perf_counter()
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.old_logprobs is not None
    mask = result.rollouts.response_mask
    assert mask is not None
    out = update(policy, optimizer, config, [batch.prompt_ids[i] for i in kept.tolist()], batch.response_ids[kept],
                 batch.old_logprobs[kept], advantages, mask, ref_model=ref_model, seed=(config.seed, step, 1))
    t3 = time.perf_counter()
    out |= {
        "train_success": batch.success_rate,
        "trajectories": float(batch.rollouts.num_trajectories),
        "generated_tokens": float(batch.generated_tokens),
        "kept": float(kept.numel()),
        "adv_abs_mean": float(advantages[mask].abs().mean()) if bool(mask.any()) else 0.0,
        "adv_mean": float(advantages[mask].mean()) if bool(mask.any()) else 0.0,
        "time_generate": t1 - t0,
        "time_credit": t2 - t1,
        "time_update": t3 - t2,
    }
    return out, batch


# ------------------------------------------------------------------------------------ checkpoints
def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def _save(out_dir: Path, step: int, policy: Any, optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
          counters: dict[str, float]) -> None:
    state = {"step": step, "model": policy.model.state_dict(), "optimizer": optimizer.state_dict(),
             "history": history, "counters": counters}
    tmp = out_dir / f".checkpoint-{step}.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out_dir / f"checkpoint-{step}.pt")


# ------------------------------------------------------------------------------------ the run
def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init_state: dict[str, Tensor] | None = None,
    progress: bool = True,
    on_step: Callable[[dict[str, Any], RolloutBatch], None] | None = None,
) -> list[dict[str, Any]]:
    """Warm start (unless ``init_state`` gives the warm weights), then ``config.steps`` RL steps.

    Writes ``out_dir/config.json``, ``metrics.jsonl`` (one line per step; ``eval_success`` on evaluation
    steps; step 0 is the warm-started policy) and ``checkpoint-<step>.pt``. With ``resume`` the run
    continues from the newest checkpoint in ``out_dir``. Returns the metrics, one dict per line."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, quiet=not progress)
    torch.manual_seed(config.seed)
    policy = build_policy(config)
    recipe = Recipe.load(config.recipe)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, Any]] = []
    counters = {"rollouts": 0.0, "tokens": 0.0}
    start = 0
    checkpoints = _checkpoints(out) if resume else []
    if checkpoints:
        state = torch.load(checkpoints[-1], weights_only=False)
        policy.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, counters, start = state["history"], state["counters"], int(state["step"])
        console.print(f"resuming {out} from step {start}")
    else:
        if resume:
            console.print(f"no checkpoint in {out}: starting afresh")
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        if init_state is not None:
            policy.model.load_state_dict(init_state)
            warm: dict[str, float] = {}
        else:
            warm = warm_start(policy, config, console.print)
        history = [{"step": 0, "rollouts": 0.0, "tokens": 0.0, "eval_success": evaluate(policy, config), **warm}]
        _save(out, 0, policy, optimizer, history, counters)
    ref_model = None
    if config.kl_coef > 0:
        import copy

        ref_model = copy.deepcopy(policy.model).eval()  # the reference: the policy the RL started from
        if start > 0:
            ref_model.load_state_dict(torch.load(_checkpoints(out)[0], weights_only=False)["model"])
    metrics_file = (out / "metrics.jsonl").open("w")
    for past in history:
        metrics_file.write(json.dumps(past) + "\n")
    metrics_file.flush()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
        job = bar.add_task(f"RL · {config.recipe} · seed {config.seed}", total=config.steps, completed=start,
                           status=f"eval {100 * history[-1].get('eval_success', math.nan):.0f}%")
        for step in range(start + 1, config.steps + 1):
            metrics, batch = rl_step(policy, ref_model, optimizer, recipe, config, step)
            counters["rollouts"] += metrics["trajectories"]
            counters["tokens"] += metrics["generated_tokens"]
            row: dict[str, Any] = {"step": step, "rollouts": counters["rollouts"], "tokens": counters["tokens"],
                                   **metrics}
            if step % config.eval_every == 0 or step == config.steps:
                row["eval_success"] = evaluate(policy, config)
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if on_step is not None:
                on_step(row, batch)
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save(out, step, policy, optimizer, history, counters)
            speed = metrics["trajectories"] / max(metrics["time_generate"] + metrics["time_update"], 1e-9)
            evals = [h["eval_success"] for h in history if "eval_success" in h]
            bar.update(job, advance=1, status=f"train {100 * metrics['train_success']:.0f}% · "
                       f"eval {100 * evals[-1]:.0f}% · {speed:.0f} traj/s")
    metrics_file.close()
    return history
