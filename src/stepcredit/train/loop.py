"""The RL loop: a policy learns tool use from credit (read top to bottom, CleanRL style).

    warm start   ``train.warmstart``: SFT on noisy-oracle demonstrations
    RL step      rollouts (chains or Tree-GRPO trees, ``stepcredit.generation``) on fresh train tasks
                 → recipe (shaping → selection → credit; a built-in name, a YAML file or inline)
                 → per-token advantages (``Credit.to_tokens``) → PPO-clip loss → AdamW
    feedback     the hooks of the methods the config turns on (``stepcredit.feedback``), at their places
    evaluation   every ``eval_every`` steps: greedy success on held-out (test split) tasks
    bookkeeping  metrics as JSONL, checkpoints every ``checkpoint_every`` steps, ``resume=True``
                 continues from the last checkpoint and reproduces the metrics of an uninterrupted run

Every random choice derives from ``TrainConfig.seed`` *and the step number* (task indices, engine seed,
policy sampling stream), so a resumed run draws exactly what the uninterrupted run drew. Works on CPU
and CUDA (``device``), with the tiny local model (``model="tiny"``) or any HF causal LM folder.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stepcredit.feedback import Feedback, Step
from stepcredit.feedback.critique import CritiqueOptions
from stepcredit.generation import TrainingBatch, rollout_chains, rollout_trees
from stepcredit.generation.scoring import sequence_logprobs
from stepcredit.recipe import Recipe
from stepcredit.train.checkpoints import (
    ResumePoint,
    adopt_checkpoints,
    clear_run,
    resume_point,
    save_checkpoint,
    start_run,
)
from stepcredit.train.config import TrainConfig
from stepcredit.train.losses import kl_penalty, masked_mean, on_off_policy_loss, ppo_clip_loss
from stepcredit.train.warmstart import minibatches, warm_start

__all__ = ["DivergenceError", "build_policy", "evaluate", "rl_step", "rollouts_for_step", "train", "update"]


class DivergenceError(ValueError):
    """A non-finite loss, gradient or weight: the run stops at ``step``, naming the ``quantity``; the
    weights of that step are never saved. ``history``: the metrics up to it (the last row marks it)."""

    def __init__(self, quantity: str, step: int | None = None, history: list[dict[str, Any]] | None = None) -> None:
        self.quantity, self.step, self.history = quantity, step, history or []
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"training diverged{at}: {quantity} is not finite (a smaller lr or max_grad_norm may "
                         "help)")


# ----------------------------------------------------------------------------------------- policy
def build_policy(config: TrainConfig) -> Any:
    """The tiny local model (tokenizer trained on the env's text) or a HF model folder."""
    from stepcredit.generation.hf import HFPolicy
    from stepcredit.generation.tiny import tiny_policy

    kw: dict[str, Any] = {"temperature": config.temperature, "top_p": config.top_p,
                          "max_new_tokens": config.max_new_tokens, "seed": config.seed, "device": config.device}
    if config.model == "tiny":
        return tiny_policy((config.env,), hidden_size=config.hidden_size, num_layers=config.num_layers, **kw)
    return HFPolicy.from_pretrained(config.model, **kw)


def _make_env(config: TrainConfig, feedback: Sequence[Feedback], split: str) -> Callable[[], Any]:
    make = config.make_env("test" if split == "test" else "train")
    for method in feedback:
        make = method.make_env(make, split)  # type: ignore[arg-type]
    return make


# ------------------------------------------------------------------------------------- evaluation
def evaluate(policy: Any, config: TrainConfig, feedback: Sequence[Feedback] | None = None) -> float:
    """Greedy success rate on the first ``eval_tasks`` tasks of the held-out split (in the feedback
    methods' test environments: SkillRL evaluates with the initial bank; ``feedback`` defaults to the
    config's)."""
    feedback = config.feedback() if feedback is None else feedback
    saved = policy.temperature
    policy.temperature = 0.0
    try:
        batch = rollout_chains(_make_env(config, feedback, "test"), policy, range(config.eval_tasks), group_size=1,
                               chat_format=policy.format, seed=config.seed)
    finally:
        policy.temperature = saved
    return batch.success_rate


# ------------------------------------------------------------------------------------ one RL step
def rollouts_for_step(policy: Any, config: TrainConfig, step: int,
                      feedback: Sequence[Feedback] | None = None) -> TrainingBatch:
    """The step's rollouts on fresh train tasks; tasks, env seeds and sampling derive from (seed, step).
    The first feedback method whose ``generate`` returns a batch makes them (Critique-GRPO);
    ``feedback`` defaults to the config's."""
    feedback = config.feedback() if feedback is None else feedback
    rng = np.random.default_rng([config.seed, step])
    tasks = rng.integers(0, 10**9, size=config.groups_per_step).tolist()
    policy.reseed(config.seed * 1_000_003 + step)
    engine_seed = int(rng.integers(2**31))
    make = _make_env(config, feedback, "train")
    for method in feedback:
        batch = method.generate(policy, make, tasks, group_size=config.group_size, seed=engine_seed)
        if batch is not None:
            return batch
    if config.rollout == "trees":
        m, n, iterations = config.tree
        return rollout_trees(make, policy, tasks, trees=m, expand=n, iterations=iterations,
                             chat_format=policy.format, seed=engine_seed)
    return rollout_chains(make, policy, tasks, group_size=config.group_size, chat_format=policy.format,
                          seed=engine_seed)


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
    off_policy: Tensor | None = None,
    shaping: tuple[float, bool] | None = None,
) -> dict[str, float]:
    """PPO-clip on per-token advantages: ``epochs`` passes over ``minibatches`` random minibatches,
    each a forward pass (``sequence_logprobs``), the loss (+ ``kl_coef`` · KL to ``ref_model``), a
    clipped-gradient AdamW step. Returns the mean of each metric.

    ``off_policy`` (N,) bool marks trajectories not sampled from the policy on their prompt (Critique-GRPO's
    refinements): their tokens are trained with policy shaping, ``on_off_policy_loss`` with
    ``shaping = (gamma, clip)`` (default: the config's feedback methods', else Critique-GRPO's defaults)."""
    if shaping is None:
        shaping = _off_policy_shaping(config.feedback())
    model, device = policy.model, policy.device
    stats: dict[str, list[float]] = {"loss": [], "clipfrac": [], "ppo_kl": [], "entropy": [], "kl": [], "grad_norm": []}
    rng = np.random.default_rng(list(seed))
    model.train()
    for _ in range(config.epochs):
        for rows in minibatches(len(prompts), config.minibatches, rng):
            rows_list = rows.tolist()
            batch_prompts = [prompts[i] for i in rows_list]
            m = mask[rows]
            logp, entropy = sequence_logprobs(model, batch_prompts, responses[rows], config.temperature,
                                              pad_id=policy.format.pad_id, mask=m)
            m = m.to(device)
            if off_policy is not None:
                off = (off_policy[rows].to(device)[:, None] & m)
                loss, metrics = on_off_policy_loss(logp, old_logprobs[rows].to(device), advantages[rows].to(device), m,
                                                   off, gamma=shaping[0], clip=shaping[1],
                                                   clip_low=config.clip_low, clip_high=config.clip_high,
                                                   clip_c=config.clip_c, agg=config.loss_agg)
            else:
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
            if not bool(torch.isfinite(loss.detach())):
                raise DivergenceError("the loss")
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if not math.isfinite(float(grad_norm)):
                raise DivergenceError("the gradient norm")
            try:
                optimizer.step()
            except RuntimeError as exc:
                if "overflow" not in str(exc):
                    raise
                raise DivergenceError("a weight (it overflows in the optimizer step)") from None
            if not _finite_weights(model):
                raise DivergenceError("a weight")
            stats["loss"].append(float(loss.detach()))
            stats["clipfrac"].append(metrics["clipfrac"])
            stats["ppo_kl"].append(metrics["ppo_kl"])
            stats["entropy"].append(float(masked_mean(entropy, m)))
            if "off_policy_prob" in metrics:
                stats.setdefault("off_policy_prob", []).append(metrics["off_policy_prob"])
            stats["grad_norm"].append(float(grad_norm))
    model.eval()
    return {k: float(np.mean(v)) for k, v in stats.items() if v}


def _finite_weights(model: Any) -> bool:
    norms = [torch.linalg.vector_norm(p.detach()) for p in model.parameters()]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


def _off_policy_shaping(feedback: Sequence[Feedback]) -> tuple[float, bool]:
    """``(gamma, clip)`` of the first method that trains off-policy tokens, else Critique-GRPO's defaults."""
    default = CritiqueOptions()
    return next((s for s in (m.off_policy_shaping() for m in feedback) if s is not None),
                (default.gamma, default.clip))


def rl_step(
    policy: Any, ref_model: Any, optimizer: torch.optim.Optimizer, recipe: Recipe, config: TrainConfig, step: int,
    feedback: Sequence[Feedback] | None = None,
) -> tuple[dict[str, float], TrainingBatch]:
    """One RL step: rollouts → feedback ``after_rollout`` → recipe → token advantages → feedback
    ``advantages`` → ``update``. Timed by part. ``feedback`` (the hooks, kept across steps: SkillRL's
    bank lives in them) defaults to the config's."""
    feedback = config.feedback() if feedback is None else feedback
    t0 = time.perf_counter()
    batch = rollouts_for_step(policy, config, step, feedback)
    t1 = time.perf_counter()
    state = Step(policy, batch, batch.rollouts, config.temperature, stats=dict(batch.stats))
    for method in feedback:
        method.after_rollout(state)
    batch = state.batch
    result = recipe.run(state.rollouts)  # selection may drop trajectories: ``kept`` says which
    kept = result.kept if state.kept is None else state.kept[result.kept]
    advantages = result.credit.to_tokens(result.rollouts)
    for method in feedback:
        advantages = method.advantages(state, kept, advantages)
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.old_logprobs is not None
    t2 = time.perf_counter()
    mask = result.rollouts.response_mask
    assert mask is not None
    off_policy = batch.off_policy[kept] if batch.off_policy is not None else None
    shaping = _off_policy_shaping(feedback)
    if not bool(torch.isfinite(advantages).all()):
        raise DivergenceError("an advantage", step)
    try:
        out = update(policy, optimizer, config, [batch.prompt_ids[i] for i in kept.tolist()],
                     batch.response_ids[kept], batch.old_logprobs[kept], advantages, mask, ref_model=ref_model,
                     seed=(config.seed, step, 1), off_policy=off_policy, shaping=shaping)
    except DivergenceError as exc:
        raise DivergenceError(exc.quantity, step) from None
    t3 = time.perf_counter()
    on_policy = ~batch.off_policy if batch.off_policy is not None else torch.ones(len(batch.paths), dtype=torch.bool)
    out |= {
        "train_success": float(batch.rollouts.outcome[on_policy].mean()) if bool(on_policy.any()) else math.nan,
        "trajectories": float(batch.rollouts.num_trajectories),
        "generated_tokens": float(batch.generated_tokens),
        "kept": float(kept.numel()),
        "adv_abs_mean": float(advantages[mask].abs().mean()) if bool(mask.any()) else 0.0,
        "adv_mean": float(advantages[mask].mean()) if bool(mask.any()) else 0.0,
        "time_generate": t1 - t0,
        "time_credit": t2 - t1,
        "time_update": t3 - t2,
        **state.stats,
    }
    return out, batch


# ------------------------------------------------------------------------------------ checkpoints
def _save(out_dir: Path, step: int, policy: Any, optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
          counters: dict[str, float], feedback: Sequence[Feedback]) -> None:
    state = {"step": step, "model": policy.model.state_dict(), "optimizer": optimizer.state_dict(),
             "history": history, "counters": counters,
             "feedback": {m.name: s for m in feedback if (s := m.state()) is not None}}
    save_checkpoint(out_dir, state)


# ------------------------------------------------------------------------------------ the run
def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_state: dict[str, Tensor] | None = None,
    progress: bool = True,
    on_step: Callable[[dict[str, Any], TrainingBatch], None] | None = None,
    start_point: ResumePoint | None = None,
) -> list[dict[str, Any]]:
    """Warm start (unless ``init_state`` gives the warm weights), then ``config.steps`` RL steps.

    Writes ``out_dir/config.json``, ``manifest.json``, ``metrics.jsonl`` (one line per step;
    ``eval_success`` on evaluation steps; step 0 is the warm-started policy) and ``checkpoint-<step>.pt``.
    A fresh run needs an empty (or absent) ``out_dir`` unless ``overwrite`` (which removes what an
    earlier run wrote there); with ``resume`` the run continues from the newest intact checkpoint the
    manifest vouches for (``train.checkpoints.resume_point``). Everything is checked before anything
    is written (``start_point``: the ``resume_point`` a caller already checked, so it is not read
    twice). A non-finite loss, gradient or weight raises ``DivergenceError`` (its last metrics row
    says which). Returns the metrics, one dict per line."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    config.check()
    out = Path(out_dir)
    point = start_point if start_point is not None else resume_point(config, out, resume=resume, overwrite=overwrite)
    console = Console(stderr=True, quiet=not progress)
    for warning in point.warnings:
        console.print(f"warning: {out}: {warning}")
    torch.manual_seed(config.seed)
    policy = build_policy(config)
    recipe = Recipe.load(config.recipe)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    feedback = config.feedback()
    history: list[dict[str, Any]] = []
    counters = {"rollouts": 0.0, "tokens": 0.0}
    start = 0
    ref_model = None
    if config.kl_coef > 0:
        import copy

        ref_model = copy.deepcopy(policy.model).eval()  # the reference: the policy the RL started from
    if point.state is not None:
        state = point.state
        policy.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, counters, start = state["history"], state["counters"], point.step
        for method in feedback:
            method.load(state.get("feedback", {}).get(method.name), f"{out / f'checkpoint-{start}.pt'}: {method.name}")
        if ref_model is not None:
            ref_model.load_state_dict(point.reference if point.reference is not None else state["model"])
        if point.adopt:
            adopt_checkpoints(out, config, point.adopt)
        console.print(f"resuming {out} from step {start}")
    else:
        if init_state is not None:
            policy.model.load_state_dict(init_state)
        if not _finite_weights(policy.model):
            raise DivergenceError("a weight of init_state", 0)
        if resume:
            console.print(f"no checkpoint in {out}: starting afresh")
        if overwrite:
            clear_run(out)
        start_run(out, config)
        warm: dict[str, float] = {}
        if init_state is None:
            warm = warm_start(policy, config, console.print, feedback)
            if not _finite_weights(policy.model):
                raise DivergenceError("a weight of the warm-started policy (a smaller sft_lr may help)", 0)
        if ref_model is not None:
            ref_model.load_state_dict(policy.model.state_dict())
        history = [{"step": 0, "rollouts": 0.0, "tokens": 0.0, "eval_success": evaluate(policy, config, feedback),
                    **warm}]
        _save(out, 0, policy, optimizer, history, counters, feedback)
    for method in feedback:
        method.save(out)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with (out / "metrics.jsonl").open("w") as metrics_file, \
            Progress(*columns, console=console, transient=True, disable=not progress) as bar:
        for past in history:
            metrics_file.write(json.dumps(past) + "\n")
        metrics_file.flush()
        job = bar.add_task(f"RL · {recipe.name} · seed {config.seed}", total=config.steps, completed=start,
                           status=f"eval {100 * history[-1].get('eval_success', math.nan):.0f}%")
        for step in range(start + 1, config.steps + 1):
            try:
                metrics, batch = rl_step(policy, ref_model, optimizer, recipe, config, step, feedback)
            except DivergenceError as exc:
                row = {"step": step, "rollouts": counters["rollouts"], "tokens": counters["tokens"],
                       "diverged": exc.quantity}
                metrics_file.write(json.dumps(row) + "\n")
                raise DivergenceError(exc.quantity, step, [*history, row]) from None
            counters["rollouts"] += metrics["trajectories"]
            counters["tokens"] += metrics["generated_tokens"]
            row = {"step": step, "rollouts": counters["rollouts"], "tokens": counters["tokens"], **metrics}
            if step % config.eval_every == 0 or step == config.steps:
                row["eval_success"] = evaluate(policy, config, feedback)
                after = Step(policy, batch, batch.rollouts, config.temperature)
                for method in feedback:
                    row |= method.after_evaluation(after)
                    method.save(out)
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if on_step is not None:
                on_step(row, batch)
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save(out, step, policy, optimizer, history, counters, feedback)
            speed = metrics["trajectories"] / max(metrics["time_generate"] + metrics["time_update"], 1e-9)
            evals = [h["eval_success"] for h in history if "eval_success" in h]
            bar.update(job, advance=1, status=f"train {100 * metrics['train_success']:.0f}% · "
                       f"eval {100 * evals[-1]:.0f}% · {speed:.0f} traj/s")
    return history
