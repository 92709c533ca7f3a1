"""``TrainConfig``: everything a training run depends on (saved beside its metrics as ``config.json``).

Every field is checked from its type hint when the config is made (types, finite ranges, literals,
bools not taken for ints — the registry's checks, ``core.registry.check_fields``); ``check()`` then
resolves what the fields name — the environment and its options, the recipe, the model folder, the
device — and the limits between fields, so a config that cannot run fails before any compute, in one
line naming the field."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from stepcredit.core import registry
from stepcredit.core.errors import show
from stepcredit.core.limits import MAX_GROUP_SIZE, MAX_NEW_TOKENS, MAX_TREE, MAX_TREE_LEAVES, tree_leaves
from stepcredit.core.registry import Interval, PositiveInt, Probability, Seed
from stepcredit.envs import env_factory, family_of, knobs
from stepcredit.feedback import METHODS, Feedback, Setup, build, parse_options
from stepcredit.feedback.critique import CritiqueOptions
from stepcredit.feedback.opd import OPDOptions
from stepcredit.feedback.r3 import R3Options
from stepcredit.feedback.skills import SkillsOptions
from stepcredit.train.losses import AggMode, KLKind

__all__ = ["MAX_TRAJECTORIES_PER_STEP", "TrainConfig", "check_device", "check_model"]

MAX_TRAJECTORIES_PER_STEP = 100_000
"""Trajectories one RL step may generate (groups per step × trajectories per group)."""

_Small = Annotated[int, Interval(1, 100_000)]
_Rate = Annotated[float, Interval(0, 10, low_open=True)]  # a learning rate: finite, and small enough for float32
_Big = Annotated[int, Interval(0, 10_000_000)]
_TREE_HINT = tuple[
    Annotated[int, Interval(1, MAX_TREE[0])],
    Annotated[int, Interval(1, MAX_TREE[1])],
    Annotated[int, Interval(0, MAX_TREE[2])],
]
# fields the TrainConfig sets itself, which env_options may not set again
_ENV_FIELDS = ("depth", "distractors", "noise", "max_steps", "split")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved beside its metrics)."""

    # environment
    env: str = "calculator"
    depth: Annotated[int, Interval(1, 64)] | None = None
    distractors: Annotated[int, Interval(0, 64)] = 0
    noise: Probability = 0.0
    max_steps: Annotated[int, Interval(1, 10_000)] | None = None
    env_options: dict[str, Any] = field(default_factory=dict)  # family-specific knobs, e.g. {"shape": "chain"}
    # model: "tiny" (built here, nothing downloaded) or a folder with a HF causal LM + tokenizer
    model: str = "tiny"
    hidden_size: Annotated[int, Interval(1, 65_536)] = 64
    num_layers: Annotated[int, Interval(1, 1_024)] = 2
    device: str = "cpu"
    # warm start: supervised fine-tuning on noisy-oracle demonstrations
    sft_demos: _Big = 1024
    sft_error_rate: Probability = 0.3
    sft_epochs: Annotated[int, Interval(0, 100_000)] = 25
    sft_batch: _Small = 32
    sft_lr: _Rate = 5e-3
    sft_feedback: _Big = 0  # + demonstrations of using feedback: a failed attempt, its critique, a correct redo
    # RL
    recipe: str | dict[str, Any] = "grpo"  # a built-in name, a YAML path, or the recipe inline
    rollout: Literal["chains", "trees"] = "chains"
    group_size: Annotated[int, Interval(1, MAX_GROUP_SIZE)] = 8
    tree: _TREE_HINT = (2, 3, 1)  # Tree-GRPO M, N, L: 2·(1 + 3) = 8 leaves per task
    groups_per_step: _Small = 16
    steps: Annotated[int, Interval(0, 10_000_000)] = 30
    lr: _Rate = 1e-3
    weight_decay: Annotated[float, Interval(0, 10)] = 0.0
    clip_low: Annotated[float, Interval(0, 1, high_open=True)] = 0.2
    clip_high: Annotated[float, Interval(0, 10)] = 0.28
    clip_c: Annotated[float, Interval(1, 1000, low_open=True)] = 3.0
    loss_agg: AggMode = "token-mean"
    kl_coef: Annotated[float, Interval(0, 1000)] = 0.0
    kl: KLKind = "k3"
    epochs: Annotated[int, Interval(1, 10_000)] = 1
    minibatches: Annotated[int, Interval(1, 10_000)] = 1
    max_grad_norm: Annotated[float, Interval(0, 1e6, low_open=True)] = 1.0
    temperature: Annotated[float, Interval(0, 10)] = 1.0
    top_p: Annotated[float, Interval(0, 1, low_open=True)] = 1.0
    max_new_tokens: Annotated[int, Interval(1, MAX_NEW_TOKENS)] = 24
    # feedback and memory (``stepcredit.feedback``; each None: off; given as a mapping of options, {} for
    # the defaults, and kept as the method's options dataclass)
    critique: CritiqueOptions | None = None  # Critique-GRPO: refinements after critiques, policy shaping
    opd: OPDOptions | None = None  # OpenClaw-RL: judge scores + hinted-teacher distillation
    r3: R3Options | None = None  # DRO: R3 reward from the reference answer's log-probs
    skills: SkillsOptions | None = None  # SkillRL: an experience bank in the prompt
    # evaluation and bookkeeping
    eval_every: PositiveInt = 5
    eval_tasks: _Small = 64
    checkpoint_every: PositiveInt = 10
    seed: Seed = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the metrics file

    def __post_init__(self) -> None:
        for name in ("model", "recipe"):  # a path names a folder or a file as its text does
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "TrainConfig")
        self.tree = tuple(self.tree)  # type: ignore[assignment]
        for method in METHODS:  # a mapping from YAML (or Python) becomes the method's checked options
            setattr(self, method, parse_options(method, getattr(self, method)))

    @classmethod
    def check_fields(cls, given: Mapping[str, Any], where: str) -> None:
        """Check some fields' values by their type hints (``ValueError`` naming ``where.field``)."""
        if not isinstance(given, Mapping):
            raise ValueError(f"{where} must be a mapping of TrainConfig fields, got {type(given).__name__}")
        registry.check_fields(cls, given, where, skip=tuple(METHODS))

    @classmethod
    def parse(cls, given: Mapping[str, Any], where: str) -> TrainConfig:
        """A config from a mapping (a YAML ``train:`` section), every field checked, errors naming
        ``where.field``."""
        cls.check_fields(given, where)
        for method in METHODS:
            if method in given:
                parse_options(method, given[method], f"{where}.{method}")
        return cls(**given)

    def check(self, where: str = "TrainConfig") -> TrainConfig:
        """Resolve what the fields name and check the limits between them (``ValueError`` naming the
        field): the environment and its options, the recipe, the model folder and the device; the
        trajectories of one step; Tree-GRPO's tree size; Critique-GRPO's chains."""
        from stepcredit.recipe import Recipe

        registry.check_fields(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, where,
                         skip=tuple(METHODS))
        try:
            family_of(self.env)
        except ValueError as exc:
            raise ValueError(f"{where}.env: {exc}") from None
        taken = sorted(set(self.env_options) & set(_ENV_FIELDS))
        if taken:
            raise ValueError(f"{where}.env_options: {taken} are TrainConfig fields; set them there")
        unknown = sorted(str(k) for k in set(self.env_options) - set(knobs(self.env)))
        if unknown:
            allowed = sorted(set(knobs(self.env)) - set(_ENV_FIELDS) - {"render_mode"})
            raise ValueError(f"{where}.env_options: unknown option(s) [{', '.join(show(k) for k in unknown[:5])}] "
                             f"for {self.env}; expected some of {allowed}")
        try:
            self.make_env("train")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        per_task = self.group_size if self.rollout == "chains" else tree_leaves(*self.tree)
        if self.rollout == "trees" and per_task > MAX_TREE_LEAVES:
            raise ValueError(f"{where}.tree: {list(self.tree)} grows {per_task} leaves per task; at most "
                             f"{MAX_TREE_LEAVES} (M · (1 + N · L))")
        if per_task * self.groups_per_step > MAX_TRAJECTORIES_PER_STEP:
            raise ValueError(f"{where}.groups_per_step: {self.groups_per_step} groups × {per_task} trajectories is "
                             f"{per_task * self.groups_per_step} per step; at most {MAX_TRAJECTORIES_PER_STEP}")
        if self.critique is not None and self.rollout != "chains":
            raise ValueError(f"{where}.critique: Critique-GRPO refines chains; set rollout to 'chains'")
        try:
            Recipe.load(self.recipe)
        except ValueError as exc:
            raise ValueError(f"{where}.recipe: {exc}") from None
        check_model(self.model, f"{where}.model")
        check_device(self.device, f"{where}.device")
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

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON values (``config.json``)."""
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self), default=repr))
        return out

    def digest(self, *, ignore: tuple[str, ...] = ("steps",)) -> str:
        """The sha256 of the config's JSON without the ``ignore`` fields (a run may grow its steps and
        resume): what a checkpoint manifest records."""
        data = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_model(model: str, where: str) -> None:
    """``"tiny"``, or a folder holding a HF causal LM: ``config.json``, weights and a tokenizer."""
    if model == "tiny":
        return
    folder = Path(model)
    if not folder.is_dir():
        raise ValueError(f"{where}: {show(model)} is neither 'tiny' nor a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{where}: {show(model)} holds no config.json; expected a Hugging Face causal LM folder")
    if not any((folder / name).is_file() for name in _WEIGHTS):
        raise ValueError(f"{where}: {show(model)} holds no weights (expected one of {', '.join(_WEIGHTS)})")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ValueError(f"{where}: {show(model)} holds no tokenizer (tokenizer.json or tokenizer_config.json)")


def check_device(device: str, where: str) -> None:
    """``cpu``, ``cuda`` / ``cuda:N`` when torch sees that GPU, or ``mps`` when available."""
    import torch

    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", device)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        raise ValueError(f"{where} must be cpu, cuda, cuda:N or mps, got {show(device)}")
    if m.group(1) == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m.group(2) or 0)
        if index >= count:
            seen = f"{count} CUDA device(s)" if count else "no CUDA device (torch " + torch.__version__ + ")"
            raise ValueError(f"{where}: {show(device)} is not available; torch sees {seen}")
    if m.group(1) == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where}: 'mps' is not available on this machine")
