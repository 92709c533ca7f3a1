"""Feedback methods, one module each, with typed options and hooks into the RL loop
(``stepcredit.feedback.base``):

* ``critique`` — Critique-GRPO (arXiv:2506.03106): refinements after critiques in the group, trained
  with policy shaping;
* ``opd`` — OpenClaw-RL (arXiv:2603.10165): a judge per step and the hinted teacher's log-ratio added
  to the advantages (on-policy distillation);
* ``r3`` — DRO (arXiv:2506.13351): the reference answer's log-probabilities after each rollout's
  reasoning as the reward, and its variance filter;
* ``skills`` — SkillRL (arXiv:2602.08234): an experience bank in every prompt, evolved after evaluations.

``METHODS`` maps each method's name (its ``TrainConfig`` field) to its options dataclass and its hooks;
``build`` makes the hooks of the methods a config turns on, in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stepcredit.core.registry import options
from stepcredit.feedback.base import Feedback, Setup, Step
from stepcredit.feedback.critique import Critique, CritiqueOptions
from stepcredit.feedback.opd import OPD, OPDOptions
from stepcredit.feedback.r3 import R3, R3Options
from stepcredit.feedback.skills import Skills, SkillsOptions

__all__ = ["METHODS", "Feedback", "Setup", "Step", "build", "parse_options"]

METHODS: dict[str, tuple[type[Any], Callable[[Any, Setup], Feedback]]] = {
    "critique": (CritiqueOptions, lambda o, s: Critique(o)),
    "opd": (OPDOptions, lambda o, s: OPD(o)),
    "r3": (R3Options, lambda o, s: R3(o)),
    "skills": (SkillsOptions, Skills),
}


def parse_options(method: str, given: Any, where: str | None = None) -> Any:
    """``given`` (a mapping, an options instance, or None: off) as the method's options, checked
    from their type hints (errors name ``where``, default the method's name); None stays None."""
    if given is None:
        return None
    return options(METHODS[method][0], given, where or method)


def build(chosen: Mapping[str, Any], setup: Setup) -> list[Feedback]:
    """The hooks of every method whose options in ``chosen`` are not None, in ``METHODS`` order."""
    return [make(chosen[name], setup) for name, (_, make) in METHODS.items() if chosen.get(name) is not None]
