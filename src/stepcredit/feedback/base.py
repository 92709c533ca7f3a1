"""The hooks a feedback method has into the RL loop (``stepcredit.train.loop``), and what one RL step
carries from hook to hook.

The loop knows no method by name: it builds one ``Feedback`` per method turned on in the config
(``stepcredit.feedback.METHODS``) and calls each hook of each, in that order, at its place::

    make_env(split)         the environments of the step, of the evaluation and of the warm start
    generate(...)           the step's rollouts (None: the loop's chains or trees)
    after_rollout(step)     judge scores, rewards, filters — before the recipe
    advantages(step, A)     the per-token advantages after the recipe
    off_policy_shaping()    how tokens not sampled from the policy are trained
    after_evaluation(step)  after each evaluation (e.g. evolve a memory)
    state() / load(state)   what a checkpoint keeps of the method; save(folder) its files beside it

Every hook has a no-op default, so a method overrides only what it changes. Options are a frozen
dataclass per method, checked from their type hints (``stepcredit.core.registry.options``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor

from stepcredit.core import Rollouts
from stepcredit.generation.engine import EnvFactory, TrainingBatch

__all__ = ["EnvFactory", "Feedback", "Setup", "Split", "Step"]

Split = Literal["train", "test", "warm"]


@dataclass(frozen=True)
class Setup:
    """What a method may need of the run to set itself up: the plain environments (no method's
    wrapper), and the warm start's noisy-oracle demonstrations (how many, their error rate) and seed."""

    make_env: Callable[[Split], EnvFactory]
    demos: int
    demo_error_rate: float
    seed: int


@dataclass
class Step:
    """One RL step as the hooks see it: the generated ``batch``, the ``rollouts`` the recipe will credit
    (after rewards and filters), ``kept`` — the rows of ``batch`` those rollouts hold (None: all, in
    order) —, the step's statistics, and each method's notes for its later hooks."""

    policy: Any
    batch: TrainingBatch
    rollouts: Rollouts
    temperature: float
    kept: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


class Feedback:
    """A feedback method's hooks; each a no-op here."""

    name: ClassVar[str] = ""

    def make_env(self, make: EnvFactory, split: Split) -> EnvFactory:
        return make

    def generate(self, policy: Any, make: EnvFactory, tasks: Sequence[int], *, group_size: int,
                 seed: int) -> TrainingBatch | None:
        return None

    def after_rollout(self, step: Step) -> None:
        return None

    def advantages(self, step: Step, kept: Tensor, advantages: Tensor) -> Tensor:
        return advantages

    def off_policy_shaping(self) -> tuple[float, bool] | None:
        """``(gamma, clip)`` of the policy-shaped loss on off-policy tokens, or None."""
        return None

    def after_evaluation(self, step: Step) -> dict[str, float]:
        return {}

    def state(self) -> Any:
        return None

    def load(self, state: Any, source: str) -> None:
        return None

    def save(self, folder: Path) -> None:
        return None
