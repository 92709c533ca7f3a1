"""``TrainConfig``: everything a training run depends on (saved beside its metrics as ``config.json``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from stepcredit.envs import env_factory
from stepcredit.feedback import METHODS, Feedback, Setup, build, parse_options
from stepcredit.feedback.critique import CritiqueOptions
from stepcredit.feedback.opd import OPDOptions
from stepcredit.feedback.r3 import R3Options
from stepcredit.feedback.skills import SkillsOptions
from stepcredit.train.losses import AggMode, KLKind

__all__ = ["TrainConfig"]


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
    recipe: str | dict[str, Any] = "grpo"  # a built-in name, a YAML path, or the recipe inline
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
    # feedback and memory (``stepcredit.feedback``; each None: off; given as a mapping of options, {} for
    # the defaults, and kept as the method's options dataclass)
    critique: CritiqueOptions | None = None  # Critique-GRPO: refinements after critiques, policy shaping
    opd: OPDOptions | None = None  # OpenClaw-RL: judge scores + hinted-teacher distillation
    r3: R3Options | None = None  # DRO: R3 reward from the reference answer's log-probs
    skills: SkillsOptions | None = None  # SkillRL: an experience bank in the prompt
    # evaluation and bookkeeping
    eval_every: int = 5
    eval_tasks: int = 64
    checkpoint_every: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the metrics file

    def __post_init__(self) -> None:
        for method in METHODS:  # a mapping from YAML (or Python) becomes the method's checked options
            setattr(self, method, parse_options(method, getattr(self, method)))

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
        if self.critique is not None and self.rollout != "chains":
            raise ValueError("critique (Critique-GRPO) refines chains: set rollout to 'chains'")
        self.make_env("train")
        return self

    def make_env(self, split: Literal["train", "test"]) -> Callable[[], Any]:
        """The environment factory of the family, without any feedback method's wrapper."""
        return env_factory(self.env, split=split, depth=self.depth, distractors=self.distractors, noise=self.noise,
                           max_steps=self.max_steps, **self.env_options)

    def feedback(self) -> list[Feedback]:
        """The hooks of the feedback methods this config turns on (``stepcredit.feedback.build``)."""
        setup = Setup(lambda split: self.make_env("test" if split == "test" else "train"), self.sft_demos,
                      self.sft_error_rate, self.seed)
        return build({name: getattr(self, name) for name in METHODS}, setup)
