"""The trainer: a small HF policy learns tool use from credit (read top to bottom, CleanRL style).

    warm start   SFT on noisy-oracle demonstrations (the policy starts with a modest success rate
                 and with the mistakes of its teacher: failures come from a few wrong steps)
    RL step      rollouts (chains or Tree-GRPO trees, ``stepcredit.rollout``) on fresh train tasks
                 → recipe (shaping → selection → credit; any built-in name or YAML file)
                 → per-token advantages (``Credit.to_tokens``) → PPO-clip loss → AdamW
    feedback     optional, each a ``TrainConfig`` field: ``critique`` (Critique-GRPO: refinements in the
                 group, policy-shaped loss on their tokens), ``opd`` (OpenClaw-RL: a judge per step, the
                 hinted teacher's log-ratio added to the advantages), ``r3`` (DRO: the reference answer's
                 log-probs after each rollout's reasoning as the reward), ``skills`` (SkillRL: a skill
                 bank in every prompt, evolved after evaluations)
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
from stepcredit.train.losses import (
    AggMode,
    KLKind,
    entropy_from_logits,
    kl_penalty,
    masked_mean,
    on_off_policy_loss,
    opd_advantages,
    ppo_clip_loss,
)

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
    sft_feedback: int = 0  # + demonstrations of using feedback: a failed attempt, its critique, a correct redo
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
    # feedback and memory (each None: off; a dict of options, {} for the defaults — see METHOD_DEFAULTS)
    critique: dict[str, Any] | None = None  # Critique-GRPO: refinements after critiques, policy shaping
    opd: dict[str, Any] | None = None  # OpenClaw-RL: judge scores + hinted-teacher distillation
    r3: dict[str, Any] | None = None  # DRO: R3 reward from the reference answer's log-probs
    skills: dict[str, Any] | None = None  # SkillRL: an experience bank in the prompt
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
        for name in ("steps", "sft_demos", "sft_epochs", "sft_feedback"):
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
        for method in METHOD_DEFAULTS:
            self.options(method)
        if self.critique is not None and self.rollout != "chains":
            raise ValueError("critique (Critique-GRPO) refines chains: set rollout to 'chains'")
        self.make_env("train")
        return self

    def options(self, method: str) -> dict[str, Any] | None:
        """The options of a feedback/memory method (its defaults updated by the config), None when off."""
        given = getattr(self, method)
        if given is None:
            return None
        if not isinstance(given, dict):
            raise ValueError(f"{method} must be a mapping of options (or null to turn it off), got {given!r}")
        defaults = METHOD_DEFAULTS[method]
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"{method}: unknown option(s) {unknown}; expected some of {sorted(defaults)}")
        merged = {**defaults, **given}
        for name in ("gamma", "votes", "top_k", "max_new_skills", "last_steps", "max_examples"):
            value = merged.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{method}.{name} must be a positive number, got {value!r}")
        if not 0.0 <= merged.get("threshold", 0.0) <= 1.0:
            raise ValueError(f"{method}.threshold must be a success rate in [0, 1], got {merged['threshold']!r}")
        for name in ("critic", "judge"):
            if name in merged and not (merged[name] == "env" or callable(merged[name])):
                raise ValueError(f"{method}.{name} must be 'env' (the rule-based default) or, from Python, a callable; "
                                 f"got {merged[name]!r}")
        return merged

    def make_env(self, split: Literal["train", "test"], bank: Any = None) -> Callable[[], Any]:
        """The environment factory; with a ``SkillBank`` (and ``skills`` on), every episode's prompt
        starts with the skills retrieved for its task type (``rollout.skills.SkillPrompt``)."""
        make = env_factory(self.env, split=split, depth=self.depth, distractors=self.distractors, noise=self.noise,
                           max_steps=self.max_steps, **self.env_options)
        options = self.options("skills")
        if bank is None or options is None:
            return make
        from stepcredit.rollout.skills import SkillPrompt

        return lambda: SkillPrompt(make(), bank, top_k=options["top_k"])


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # Critique-GRPO (arXiv:2506.03106): critic "env" = rule-based from the env's feedback; refine the
    # failed attempts ("failed") or all; policy shaping f(p) = p/(p + gamma); clip: PPO clip on-policy
    "critique": {"critic": "env", "refine": "failed", "gamma": 0.1, "clip": False},
    # OpenClaw-RL OPD (arXiv:2603.10165): judge "env" = rule-based; votes per step; A = w_rl·A + w_opd·log-ratio
    "opd": {"judge": "env", "votes": 1, "w_rl": 1.0, "w_opd": 1.0},
    # DRO R3 (arXiv:2506.13351): reward = outcome_weight·R + r3_weight·R3; the variance filter on groups
    "r3": {"weighting": "linear", "r3_weight": 1.0, "outcome_weight": 0.0, "min_spread": None, "keep_quantile": None},
    # SkillRL (arXiv:2602.08234): bank distilled from the warm-start demonstrations; evolution after evals
    "skills": {"top_k": 6, "threshold": 0.4, "max_new_skills": 3, "last_steps": 5, "max_examples": 5},
}


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


def padded(token_lists: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Token lists as right-padded ``(N, W)`` ids and their mask, placed in one scatter."""
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.int64)
    w = max(int(lengths.max()) if lengths.numel() else 0, width or 0)
    ids = torch.full((len(token_lists), w), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(token_lists), w), dtype=torch.bool)
    rows = segments.segment_ids(torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]))
    cols = segments.ranges(torch.zeros_like(lengths), lengths)
    ids[rows, cols] = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.int64)
    mask[rows, cols] = True
    return ids, mask


def score_tokens(policy: Any, contexts: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]], temperature: float,
                 chunk: int = 64) -> tuple[Tensor, Tensor]:
    """``log π(token_j | context, tokens_<j)`` of every (context, tokens) pair with the policy's model,
    without gradient, ``chunk`` pairs per forward pass: ``(N, W)`` float32 on the CPU and its mask."""
    ids, mask = padded(tokens, policy.format.pad_id)
    parts = []
    with torch.no_grad():
        for lo in range(0, len(tokens), chunk):
            sl = slice(lo, lo + chunk)
            logp, _ = sequence_logprobs(policy.model, [list(c) for c in contexts[sl]], ids[sl], temperature,
                                        pad_id=policy.format.pad_id, mask=mask[sl])
            parts.append(logp.float().cpu())
    return (torch.cat(parts) if parts else torch.zeros(ids.shape)), mask


def _minibatches(n: int, parts: int, rng: np.random.Generator) -> Iterator[Tensor]:
    order = torch.from_numpy(rng.permutation(n))
    yield from (chunk for chunk in torch.tensor_split(order, parts) if chunk.numel())


# ------------------------------------------------------------------------------------ warm start
def initial_bank(config: TrainConfig) -> Any:
    """SkillRL's cold-start bank, distilled (``rollout.skills.distill``, the rule summariser) from the
    warm start's noisy-oracle demonstrations — their texts and outcomes only. None without ``skills``."""
    if config.options("skills") is None:
        return None
    from stepcredit.rollout.skills import distill, episodes_from_batch

    demos = rollout_chains(config.make_env("train"), NoisyOracle(config.sft_error_rate, seed=config.seed),
                           range(10**9, 10**9 + max(config.sft_demos, 1)), group_size=1, seed=config.seed)
    return distill(episodes_from_batch(demos))


def warm_start(policy: Any, config: TrainConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """SFT on noisy-oracle demonstrations: cross-entropy on the generated (action) tokens only. With
    ``skills`` the demonstrations' prompts carry the initial bank's skills (SkillRL's cold start on
    skill-augmented trajectories)."""
    demos = rollout_chains(
        config.make_env("train", initial_bank(config)),
        NoisyOracle(config.sft_error_rate, seed=config.seed),
        range(10**9, 10**9 + config.sft_demos),  # task indices the RL steps never draw in practice
        group_size=1,
        chat_format=policy.format,
        seed=config.seed,
    )
    assert demos.response_ids is not None and demos.prompt_ids is not None
    mask = demos.rollouts.response_mask
    assert mask is not None
    prompts, responses = demos.prompt_ids, demos.response_ids
    fed = 0
    if config.sft_feedback > 0:
        prompts, responses, mask, fed = _with_feedback_demos(policy, config, prompts, responses, mask)
    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr)
    rng = np.random.default_rng([config.seed, 7])
    model.train()
    losses = []
    n = len(prompts)
    for _ in range(config.sft_epochs):
        for rows in _minibatches(n, max(1, math.ceil(n / config.sft_batch)), rng):
            m = mask[rows]
            logp, _ = sequence_logprobs(model, [prompts[i] for i in rows.tolist()],
                                        responses[rows], 1.0, pad_id=policy.format.pad_id, mask=m)
            m = m.to(logp.device)
            loss = -masked_mean(logp, m)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    log(f"warm start: {n} demonstrations ({100 * demos.success_rate:.0f}% successful"
        + (f"; {fed} of them use a critique or a hint" if fed else "")
        + f"), final loss {losses[-1]:.3f}")
    return {"sft_loss": losses[-1], "sft_demo_success": demos.success_rate}


def _with_feedback_demos(policy: Any, config: TrainConfig, prompts: list[list[int]], responses: Tensor,
                         mask: Tensor) -> tuple[list[list[int]], Tensor, Tensor, int]:
    """Demonstrations of using feedback turns, on ``sft_feedback`` tasks of their own:

    * *refinements*: the noisy oracle's attempts, each group's failed one critiqued (``env_critic``) and
      redone by the oracle, the redo's prompt being the task, the attempt and the critique
      (``rollout_critique_chains(attach="critique")``) — what Critique-GRPO's refinements see;
    * *hinted answers*: the oracle's runs, a hint "The correct answer is X." (``env_judge``'s) inserted
      as a user turn right before the final answer — what OPD's hinted teacher sees (where the family
      has a reference answer).

    The warm start is shared by every run of an experiment, so the baseline starts from the same weights."""
    from stepcredit.rollout import OraclePolicy
    from stepcredit.rollout.critique import rollout_critique_chains
    from stepcredit.rollout.hints import answer_hint, hinted_context

    fb = rollout_critique_chains(
        config.make_env("train"),
        NoisyOracle(config.sft_error_rate, seed=config.seed + 1),
        range(2 * 10**9, 2 * 10**9 + config.sft_feedback),  # tasks neither the RL steps nor the demos draw
        group_size=2,
        refiner=OraclePolicy(seed=config.seed),
        attach="critique",
        chat_format=policy.format,
        seed=config.seed + 1,
    )
    assert fb.prompt_ids is not None and fb.response_ids is not None and fb.off_policy is not None
    fb_mask = fb.rollouts.response_mask
    assert fb_mask is not None
    rows = torch.nonzero(fb.off_policy).squeeze(1)
    new_prompts = [fb.prompt_ids[i] for i in rows.tolist()]
    new_actions: list[list[int]] = []  # the hinted answers' tokens
    oracle = rollout_chains(config.make_env("train"), OraclePolicy(seed=config.seed),
                            range(2 * 10**9, 2 * 10**9 + config.sft_feedback), group_size=1,
                            chat_format=policy.format, seed=config.seed + 2)
    assert oracle.prompt_ids is not None and oracle.references is not None
    for i, path in enumerate(oracle.paths):
        reference = oracle.references[i]
        if reference is None:
            continue
        last = oracle.nodes[path[-1]]
        assert last.gen_ids is not None
        new_prompts.append(hinted_context(oracle.context_ids(i, len(path) - 1), answer_hint(reference), policy.format))
        new_actions.append(list(last.gen_ids))
    # the demonstrations' responses: generated tokens only (a refinement's observations stay masked out)
    fb_ids, fb_mask2 = fb.response_ids[rows], fb_mask[rows]
    pad = policy.format.pad_id
    hinted_ids, hinted_mask = padded(new_actions, pad, max(responses.shape[1], fb_ids.shape[1]))
    width = hinted_ids.shape[1]

    def widen(x: Tensor, fill: Any) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill)

    return ([*prompts, *new_prompts],
            torch.cat([widen(responses, pad), widen(fb_ids, pad), hinted_ids]),
            torch.cat([widen(mask, False), widen(fb_mask2, False), hinted_mask]),
            len(new_prompts))


# ------------------------------------------------------------------------------------ evaluation
def evaluate(policy: Any, config: TrainConfig, bank: Any = None) -> float:
    """Greedy success rate on the first ``eval_tasks`` tasks of the held-out split (with ``bank``'s
    skills in the prompts: SkillRL evaluates with the initial bank, evolved skills go to training only)."""
    saved = policy.temperature
    policy.temperature = 0.0
    try:
        batch = rollout_chains(config.make_env("test", bank), policy, range(config.eval_tasks), group_size=1,
                               chat_format=policy.format, seed=config.seed)
    finally:
        policy.temperature = saved
    return batch.success_rate


# ------------------------------------------------------------------------------------ one RL step
def rollouts_for_step(policy: Any, config: TrainConfig, step: int, bank: Any = None) -> RolloutBatch:
    """The step's rollouts on fresh train tasks; tasks, env seeds and sampling derive from (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    tasks = rng.integers(0, 10**9, size=config.groups_per_step).tolist()
    policy.reseed(config.seed * 1_000_003 + step)
    engine_seed = int(rng.integers(2**31))
    critique = config.options("critique")
    if critique is not None:
        from stepcredit.rollout.critique import env_critic, rollout_critique_chains

        critic = env_critic if critique["critic"] == "env" else critique["critic"]
        return rollout_critique_chains(config.make_env("train", bank), policy, tasks, group_size=config.group_size,
                                       critic=critic, refine=critique["refine"], chat_format=policy.format,
                                       seed=engine_seed)
    if config.rollout == "trees":
        m, n, iterations = config.tree
        return rollout_trees(config.make_env("train", bank), policy, tasks, trees=m, expand=n, iterations=iterations,
                             chat_format=policy.format, seed=engine_seed)
    return rollout_chains(config.make_env("train", bank), policy, tasks, group_size=config.group_size,
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
    off_policy: Tensor | None = None,
) -> dict[str, float]:
    """PPO-clip on per-token advantages: ``epochs`` passes over ``minibatches`` random minibatches,
    each a forward pass (``sequence_logprobs``), the loss (+ ``kl_coef`` · KL to ``ref_model``), a
    clipped-gradient AdamW step. Returns the mean of each metric.

    ``off_policy`` (N,) bool marks trajectories not sampled from the policy on their prompt (Critique-GRPO's
    refinements): their tokens are trained with policy shaping, ``on_off_policy_loss`` with the
    ``critique`` options' ``gamma`` and ``clip``."""
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
            if off_policy is not None:
                shaping = config.options("critique") or METHOD_DEFAULTS["critique"]
                off = (off_policy[rows].to(device)[:, None] & m)
                loss, metrics = on_off_policy_loss(logp, old_logprobs[rows].to(device), advantages[rows].to(device), m,
                                                   off, gamma=shaping["gamma"], clip=shaping["clip"],
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
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            stats["loss"].append(float(loss.detach()))
            stats["clipfrac"].append(metrics["clipfrac"])
            stats["ppo_kl"].append(metrics["ppo_kl"])
            stats["entropy"].append(float(masked_mean(entropy, m)))
            if "off_policy_prob" in metrics:
                stats.setdefault("off_policy_prob", []).append(metrics["off_policy_prob"])
            stats["grad_norm"].append(float(grad_norm))
    model.eval()
    return {k: float(np.mean(v)) for k, v in stats.items() if v}


def teacher_logprobs(policy: Any, batch: RolloutBatch, hints: list[str | None], temperature: float,
                     chunk: int = 64) -> tuple[Tensor, Tensor]:
    """OPD's teacher pass: ``log π(y_j | s_t ⊕ hint, y_<j)`` of every hinted step's *original* tokens,
    placed at their response positions ``(N, T)``, and the ``(N, T)`` mask of those tokens. The same
    model (no gradient) on contexts built by ``rollout.hints.hinted_contexts``."""
    from stepcredit.rollout.hints import hinted_contexts

    assert batch.response_ids is not None
    shape = batch.response_ids.shape
    teacher = torch.zeros(shape, dtype=torch.float32)
    hinted = torch.zeros(shape, dtype=torch.bool)
    inputs = hinted_contexts(batch, hints, policy.format)
    if not inputs.actions:
        return teacher, hinted
    logp, valid = score_tokens(policy, inputs.contexts, inputs.actions, temperature, chunk)
    rows, cols = torch.nonzero(valid, as_tuple=True)
    target_rows, target_cols = inputs.trajectory[rows], inputs.start[rows] + cols
    teacher[target_rows, target_cols] = logp[rows, cols]
    hinted[target_rows, target_cols] = True
    return teacher, hinted


def r3_rollouts(policy: Any, batch: RolloutBatch, options: dict[str, Any], temperature: float,
                chunk: int = 64) -> tuple[Any, Tensor | None, dict[str, float]]:
    """DRO's R3 reward in the loop: the policy's log-probs of the reference answer's tokens with each
    rollout's own reasoning before it (the rollout's final answer replaced by the reference, v1 §4.2.1),
    then ``shaping.r3`` — the reward ``outcome_weight·R + r3_weight·R3`` as the rollouts' outcome, and the
    variance filter. Returns the rollouts (filtered), the indices kept (None: no filter) and statistics."""
    from stepcredit.envs.actions import parse_action
    from stepcredit.shaping.r3 import r3_filter, r3_reward

    r = batch.rollouts
    fmt = policy.format
    if batch.references is None or any(ref is None for ref in batch.references):
        raise ValueError("r3 needs the verifier's reference answer: this environment family has none "
                         "(ToolEnv.reference_answer returned None)")
    assert batch.prompt_ids is not None
    contexts, answers = [], []
    for i, path in enumerate(batch.paths):
        last = batch.nodes[path[-1]]
        if parse_action(last.step.action).answer is not None:  # the reasoning is everything before the answer
            before = batch.context_ids(i, len(path) - 1)
        else:  # no answer given (turn budget): all of it, then the answer's turn
            assert last.context.token_ids is not None
            before = [*last.context.token_ids, *fmt.encode_observation(last.step.observation)]
        contexts.append(before)
        answers.append(fmt.encode_action(f"answer {batch.references[i]}"))
    logp, ref_mask = score_tokens(policy, contexts, answers, temperature, chunk)
    ref_logprobs = logp.double().clamp(max=0.0)
    r3 = r3_reward(ref_logprobs, ref_mask, r.group, weighting=options["weighting"]).to(r.outcome.dtype)
    reward = options["outcome_weight"] * r.outcome + options["r3_weight"] * r3
    shaped = r.replace(outcome=reward)
    success = r.outcome >= 1.0
    stats = {"r3_mean": float(r3.mean()),
             "r3_success_gap": float(r3[success].mean() - r3[~success].mean()) if bool(success.any() & (~success).any())
             else math.nan}
    if options["min_spread"] is None and options["keep_quantile"] is None:
        return shaped, None, stats
    keep = r3_filter(ref_logprobs, ref_mask, r.group, min_spread=options["min_spread"],
                     keep_quantile=options["keep_quantile"])
    kept = torch.nonzero(keep).squeeze(1)
    stats["r3_kept"] = float(keep.float().mean())
    return shaped.select(kept), kept, stats


def rl_step(
    policy: Any, ref_model: Any, optimizer: torch.optim.Optimizer, recipe: Recipe, config: TrainConfig, step: int,
    bank: Any = None,
) -> tuple[dict[str, float], RolloutBatch]:
    """One RL step: rollouts → (judge) → recipe → token advantages (+ OPD) → ``update``. Timed by part."""
    t0 = time.perf_counter()
    batch = rollouts_for_step(policy, config, step, bank)
    t1 = time.perf_counter()
    extra: dict[str, float] = dict(batch.stats)
    opd = config.options("opd")
    hints: list[str | None] = []
    if opd is not None:
        from stepcredit.rollout.hints import env_judge, judge_steps, with_judge_scores

        scores, hints = judge_steps(batch, env_judge if opd["judge"] == "env" else opd["judge"], votes=opd["votes"])
        batch = with_judge_scores(batch, scores)
        extra["hinted_steps"] = float(sum(h is not None for h in hints) / max(len(hints), 1))
        extra["judge_score_mean"] = float(scores.mean()) if scores.numel() else 0.0
    rollouts, pre = batch.rollouts, None
    r3 = config.options("r3")
    if r3 is not None:
        rollouts, pre, r3_stats = r3_rollouts(policy, batch, r3, config.temperature)
        extra |= r3_stats
    result = recipe.run(rollouts)  # selection may drop trajectories: ``kept`` says which
    kept = result.kept if pre is None else pre[result.kept]
    advantages = result.credit.to_tokens(result.rollouts)
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.old_logprobs is not None
    if opd is not None:
        teacher, hinted = teacher_logprobs(policy, batch, hints, config.temperature)
        advantages = opd_advantages(advantages, teacher[kept], batch.old_logprobs[kept], hinted[kept],
                                    w_rl=opd["w_rl"], w_opd=opd["w_opd"])
        ratio = (teacher - batch.old_logprobs)[hinted]
        extra["opd_mean"] = float(ratio.mean()) if ratio.numel() else 0.0  # E = −KL(π_old ‖ π_teacher) on samples
        extra["opd_abs_mean"] = float(ratio.abs().mean()) if ratio.numel() else 0.0
    t2 = time.perf_counter()
    mask = result.rollouts.response_mask
    assert mask is not None
    off_policy = batch.off_policy[kept] if batch.off_policy is not None else None
    out = update(policy, optimizer, config, [batch.prompt_ids[i] for i in kept.tolist()], batch.response_ids[kept],
                 batch.old_logprobs[kept], advantages, mask, ref_model=ref_model, seed=(config.seed, step, 1),
                 off_policy=off_policy)
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
        **extra,
    }
    return out, batch


def evolve_bank(bank: Any, batch: RolloutBatch, config: TrainConfig) -> tuple[Any, list[Any]]:
    """SkillRL's recursive evolution after an evaluation: task types whose success rate is below
    ``threshold`` get up to ``max_new_skills`` new skills from their failed episodes (the last
    ``last_steps`` steps of up to ``max_examples``). Ours reads the step's *training* episodes, not the
    held-out ones (SkillRL reads its validation failures): nothing of the test split reaches training."""
    from stepcredit.rollout.skills import episodes_from_batch, evolve, success_rates

    options = config.options("skills")
    assert options is not None
    episodes = episodes_from_batch(batch)
    if batch.off_policy is not None:
        episodes = [e for e, off in zip(episodes, batch.off_policy.tolist(), strict=True) if not off]
    return evolve(bank, episodes, success_rates(episodes), threshold=options["threshold"],
                  max_new_skills=options["max_new_skills"], last_steps=options["last_steps"],
                  max_examples=options["max_examples"])


# ------------------------------------------------------------------------------------ checkpoints
def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def _save(out_dir: Path, step: int, policy: Any, optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
          counters: dict[str, float], bank: Any = None) -> None:
    state = {"step": step, "model": policy.model.state_dict(), "optimizer": optimizer.state_dict(),
             "history": history, "counters": counters, "skills": bank.to_json() if bank is not None else None}
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
    eval_bank = bank = initial_bank(config)  # SkillRL: None unless ``skills``
    checkpoints = _checkpoints(out) if resume else []
    if checkpoints and (out / "config.json").is_file():
        saved = json.loads((out / "config.json").read_text())
        now = json.loads(json.dumps(dataclasses.asdict(config), default=repr))
        changed = sorted(k for k in set(saved) | set(now) if k != "steps" and saved.get(k) != now.get(k))
        if changed:
            raise ValueError(f"{out}: cannot resume, the config differs from the checkpointed run's in {changed} "
                             "(only steps may grow); use a new output folder")
    if checkpoints:
        state = torch.load(checkpoints[-1], weights_only=False)
        policy.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, counters, start = state["history"], state["counters"], int(state["step"])
        if state.get("skills") is not None:
            from stepcredit.rollout.skills import SkillBank

            bank = SkillBank.from_json(state["skills"], source=f"{checkpoints[-1]}: skills")
        console.print(f"resuming {out} from step {start}")
    else:
        if resume:
            console.print(f"no checkpoint in {out}: starting afresh")
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1, default=repr))
        if init_state is not None:
            policy.model.load_state_dict(init_state)
            warm: dict[str, float] = {}
        else:
            warm = warm_start(policy, config, console.print)
        history = [{"step": 0, "rollouts": 0.0, "tokens": 0.0, "eval_success": evaluate(policy, config, eval_bank),
                    **warm}]
        _save(out, 0, policy, optimizer, history, counters, bank)
    if bank is not None:
        bank.save(out / "skills.json")
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
            metrics, batch = rl_step(policy, ref_model, optimizer, recipe, config, step, bank)
            counters["rollouts"] += metrics["trajectories"]
            counters["tokens"] += metrics["generated_tokens"]
            row: dict[str, Any] = {"step": step, "rollouts": counters["rollouts"], "tokens": counters["tokens"],
                                   **metrics}
            if step % config.eval_every == 0 or step == config.steps:
                row["eval_success"] = evaluate(policy, config, eval_bank)
                if bank is not None:
                    bank, added = evolve_bank(bank, batch, config)
                    row["skills"], row["skills_added"] = float(len(bank)), float(len(added))
                    if added:
                        bank.save(out / "skills.json")
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if on_step is not None:
                on_step(row, batch)
            if step % config.checkpoint_every == 0 or step == config.steps:
                _save(out, step, policy, optimizer, history, counters, bank)
            speed = metrics["trajectories"] / max(metrics["time_generate"] + metrics["time_update"], 1e-9)
            evals = [h["eval_success"] for h in history if "eval_success" in h]
            bar.update(job, advance=1, status=f"train {100 * metrics['train_success']:.0f}% · "
                       f"eval {100 * evals[-1]:.0f}% · {speed:.0f} traj/s")
    metrics_file.close()
    return history
