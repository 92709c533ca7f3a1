"""Audit several recipes on one labelled batch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from stepcredit.auditing import metrics as M
from stepcredit.credit import Credit
from stepcredit.recipe import Recipe
from stepcredit.rollouts import Rollouts

DEFAULT_RECIPES = (
    "grpo",
    "dr_grpo",
    "rloo",
    "gigpo",
    "tree_grpo",
    "treerl",
    "mt_grpo",
    "toolpo",
    "action_anchor",
    "call_consensus",
)


@dataclass
class RecipeAudit:
    """One recipe's credit on the batch and its metrics."""

    name: str
    description: str
    kept: Tensor  # trajectories the recipe credited (indices into the batch)
    step_credit: Tensor  # [S] of the full batch; NaN for steps of dropped trajectories
    call_credit: Tensor  # [C] of the full batch; NaN likewise
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    mean_credit: dict[str, Any]
    density: dict[str, float | None]
    length_skew: list[dict[str, Any]]
    # the headline on subsets of the units (``metrics.SUBSETS``): {"units", "metrics", "intervals"}
    breakdown: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Audit:
    """The audit of every recipe on one batch."""

    rollouts: Rollouts
    unit: str
    recipes: list[RecipeAudit] = field(default_factory=list)
    seconds: float = 0.0
    bootstrap: int = 0
    success_threshold: float = 1.0
    calibration: dict[str, float] | None = None  # when trajectories state a confidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "calibration": self.calibration,
            "trajectories": self.rollouts.num_trajectories,
            "groups": self.rollouts.num_groups,
            "bootstrap": self.bootstrap,
            "seconds": self.seconds,
            "recipes": {
                a.name: {
                    "metrics": a.metrics,
                    "intervals": {k: list(v) for k, v in a.intervals.items()},
                    "mean_credit": a.mean_credit,
                    "density": a.density,
                    "length_skew": a.length_skew,
                    "kept": int(a.kept.numel()),
                    "breakdown": a.breakdown,
                }
                for a in self.recipes
            },
        }


def _spread(values: Tensor, positions: Tensor, size: int) -> Tensor:
    out = torch.full((size,), float("nan"), dtype=torch.float32, device=values.device)
    out[positions] = values.to(torch.float32)
    return out


def audit_recipe(
    rollouts: Rollouts,
    recipe: Recipe,
    *,
    success_threshold: float = 1.0,
    bootstrap: int = 1000,
    seed: int = 0,
    subsets: bool = True,
) -> RecipeAudit:
    r = rollouts
    result = recipe.run(r)
    kept, sub, credit = result.kept, result.rollouts, result.credit
    steps, calls = r.expand(kept)
    step_credit = _spread(credit.per_step(sub), steps, r.num_steps)
    call_credit = _spread(credit.per_call(sub), calls, r.num_calls)
    u = M.units(r, call_credit if r.call_label is not None else step_credit, success_threshold=success_threshold)
    point = _point(u)
    breakdown = {}
    if subsets:
        for name, mask in M.unit_subsets(r, u, success_threshold=success_threshold).items():
            part = u.subset(mask)
            breakdown[name] = {
                "units": int(mask.sum()),
                "metrics": _point(part),
                "intervals": {k: list(v) for k, v in M.bootstrap_intervals(
                    part, r.num_groups, samples=bootstrap, seed=seed).items()},
            }
    return RecipeAudit(
        name=recipe.name,
        description=recipe.description,
        kept=kept,
        step_credit=step_credit,
        call_credit=call_credit,
        metrics=point,
        intervals=M.bootstrap_intervals(u, r.num_groups, samples=bootstrap, seed=seed),
        mean_credit=M.mean_credit_table(u),
        density=M.signal_density(sub, credit),
        length_skew=M.length_skew(sub, credit),
        breakdown=breakdown,
    )


def _point(u: M.Units) -> dict[str, float]:
    ones = torch.ones(1, u.label.numel(), dtype=torch.float64)
    return {k: float(v[0]) for k, v in M.headline(u, ones).items()}


def audit(
    rollouts: Rollouts,
    recipes: Sequence[str | Recipe] = DEFAULT_RECIPES,
    *,
    success_threshold: float = 1.0,
    bootstrap: int = 1000,
    seed: int = 0,
    subsets: bool = True,
) -> Audit:
    """Run each recipe on ``rollouts`` and measure where its credit lands against the labels — on all
    labelled units and (``subsets``) on the breakdown of ``metrics.SUBSETS``: without the units every
    trajectory of the task made, and by group type (mixed / all-fail / all-success)."""
    start = time.perf_counter()
    unit = M.units(rollouts, Credit.zeros(rollouts), success_threshold=success_threshold).kind
    audits = [
        audit_recipe(rollouts, Recipe.load(spec), success_threshold=success_threshold, bootstrap=bootstrap, seed=seed,
                     subsets=subsets)
        for spec in recipes
    ]
    seconds = time.perf_counter() - start
    return Audit(
        rollouts, unit, audits, seconds, bootstrap, success_threshold, calibration(rollouts, success_threshold)
    )


def calibration(rollouts: Rollouts, success_threshold: float = 1.0) -> dict[str, float] | None:
    """Calibration of the stated confidences (column, else the last ``<confidence>`` tag), or None when
    no trajectory states a usable one: Brier score, ECE (10 bins), AUROC, and how many stated one."""
    from stepcredit.auditing.calibration import brier_score, confidence_auroc, expected_calibration_error
    from stepcredit.shaping.calibration import stated_confidence

    q = stated_confidence(rollouts, "column" if rollouts.confidence is not None else "tag")
    correct = (rollouts.outcome >= success_threshold).double()
    stated = torch.isfinite(q) & (q >= 0) & (q <= 1)
    if not bool(stated.any()):
        return None
    return {
        "stated": int(stated.sum()),
        "brier_score": brier_score(q, correct),
        "ece": expected_calibration_error(q, correct),
        "auroc": confidence_auroc(q, correct),
    }
