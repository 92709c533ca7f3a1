"""stepcredit: dense per-step and per-token credit for RL of tool-using LLM agents.

The top level holds the data model, the loaders, the recipe, the audit and the credit estimators::

    import stepcredit as sc

    rollouts = sc.from_trainer_tensors(response_mask, uids, outcome=scores)
    credit = sc.Recipe.builtin("call_evidence").run(rollouts).credit
    advantages = credit.to_tokens(rollouts)          # (N, T), aligned with response_mask

Everything else lives in its stage's subpackage (``stepcredit.io``, ``.shaping``, ``.selection``,
``.estimators``, ``.auditing``, ``.streaming``, ``.envs``, ``.generation``, ``.feedback``, ``.train``,
``.integrations``). ``import stepcredit`` loads only the core (``stepcredit.core``); every other name
and subpackage is imported on first use (PEP 562), so the verl plugin, a Ray worker or a script that
needs one estimator does not pay for the environments, the trainer or the report.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stepcredit.core import CallRecord, Credit, Rollouts, StepKind, StepRecord, TrajectoryRecord, build
from stepcredit.core.errors import RolloutError
from stepcredit.core.registry import register

if TYPE_CHECKING:
    from stepcredit.auditing import Audit, audit
    from stepcredit.estimators import (
        action_anchor,
        brier,
        call_consensus,
        call_evidence,
        gigpo,
        grpo,
        ms_grpo,
        mt_grpo,
        oracle,
        per_turn,
        per_turn_index,
        prm_step,
        reinforce_pp_baseline,
        rloo,
        step_grpo,
        toolpo,
        tree_grpo,
        treepo,
        treerl,
    )
    from stepcredit.io import from_trainer_tensors, load
    from stepcredit.recipe import Recipe, RecipeError, RecipeResult

ESTIMATORS = (
    "action_anchor",
    "brier",
    "call_consensus",
    "call_evidence",
    "gigpo",
    "grpo",
    "ms_grpo",
    "mt_grpo",
    "oracle",
    "per_turn",
    "per_turn_index",
    "prm_step",
    "reinforce_pp_baseline",
    "rloo",
    "step_grpo",
    "toolpo",
    "tree_grpo",
    "treepo",
    "treerl",
)
"""The credit estimators, importable from here as from ``stepcredit.estimators`` (Python name =
registry name)."""

# name -> the module it is imported from on first use
_LAZY: dict[str, str] = {
    "Audit": "stepcredit.auditing",
    "audit": "stepcredit.auditing",
    "from_trainer_tensors": "stepcredit.io",
    "load": "stepcredit.io",
    "Recipe": "stepcredit.recipe",
    "RecipeError": "stepcredit.recipe",
    "RecipeResult": "stepcredit.recipe",
    **dict.fromkeys(ESTIMATORS, "stepcredit.estimators"),
}
_SUBPACKAGES = frozenset(
    {
        "auditing",
        "core",
        "envs",
        "estimators",
        "feedback",
        "generation",
        "integrations",
        "io",
        "recipe",
        "selection",
        "shaping",
        "streaming",
        "train",
        "views",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once loaded, an ordinary attribute
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"stepcredit.{name}")
    raise AttributeError(f"module 'stepcredit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})


__all__ = [
    "Audit",
    "CallRecord",
    "Credit",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "RolloutError",
    "Rollouts",
    "StepKind",
    "StepRecord",
    "TrajectoryRecord",
    "action_anchor",
    "audit",
    "brier",
    "build",
    "call_consensus",
    "call_evidence",
    "from_trainer_tensors",
    "gigpo",
    "grpo",
    "load",
    "ms_grpo",
    "mt_grpo",
    "oracle",
    "per_turn",
    "per_turn_index",
    "prm_step",
    "register",
    "reinforce_pp_baseline",
    "rloo",
    "step_grpo",
    "toolpo",
    "tree_grpo",
    "treepo",
    "treerl",
]
__version__ = "0.1.0"
