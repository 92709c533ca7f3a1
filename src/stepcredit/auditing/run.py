"""Audit several recipes on one labelled batch — or on a stream of batches (chunks of a large log).

Every figure of the audit is made from *sums over groups* (``RecipePart``): the headline metrics and
their bootstrap from per-group sufficient statistics (``metrics.UnitStats``), the mean-credit table,
signal density and length skew from counts and sums. A batch audited at once is one part; a log
streamed chunk by chunk (``stepcredit.streaming``) is many, added up in chunk order.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stepcredit.auditing import metrics as M
from stepcredit.core import Rollouts
from stepcredit.core.credit import Credit
from stepcredit.recipe import Recipe

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
    """One recipe's credit on the batch and its metrics. In a streamed audit ``kept``, ``step_credit``
    and ``call_credit`` are those of the sample chunk (``Audit.rollouts``); the metrics, ``num_kept``
    and the rest cover every chunk."""

    name: str
    description: str
    kept: Tensor  # trajectories the recipe credited (indices into Audit.rollouts)
    step_credit: Tensor  # [S] of Audit.rollouts; NaN for steps of dropped trajectories
    call_credit: Tensor  # [C] of Audit.rollouts; NaN likewise
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    mean_credit: dict[str, Any]
    density: dict[str, float | None]
    length_skew: list[dict[str, Any]]
    # the headline on subsets of the units (``metrics.SUBSETS``): {"units", "metrics", "intervals"}
    breakdown: dict[str, dict[str, Any]]
    num_kept: int  # trajectories credited in all (in a stream: every chunk's)


@dataclass
class Audit:
    """The audit of every recipe on one batch (or a stream: then ``rollouts`` is the sample chunk the
    report shows trajectory by trajectory, and ``trajectories`` / ``groups`` / ``chunks`` count all)."""

    rollouts: Rollouts
    unit: str
    recipes: list[RecipeAudit]
    seconds: float
    bootstrap: int
    success_threshold: float
    calibration: dict[str, float] | None  # when trajectories state a confidence
    trajectories: int  # in all chunks
    groups: int
    chunks: int
    failed: int  # trajectories below success_threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "calibration": self.calibration,
            "trajectories": self.trajectories,
            "groups": self.groups,
            "failed": self.failed,
            "chunks": self.chunks,
            "bootstrap": self.bootstrap,
            "seconds": self.seconds,
            "recipes": {
                a.name: {
                    "metrics": a.metrics,
                    "intervals": {k: list(v) for k, v in a.intervals.items()},
                    "mean_credit": a.mean_credit,
                    "density": a.density,
                    "length_skew": a.length_skew,
                    "kept": a.num_kept,
                    "breakdown": a.breakdown,
                }
                for a in self.recipes
            },
        }


# ------------------------------------------------------------------------------------- parts
@dataclass
class RecipePart:
    """One recipe's audit statistics on one batch: sums that add up across the chunks of a stream."""

    kept: int  # trajectories credited
    stats: dict[str, M.UnitStats]  # "all", and each of ``metrics.SUBSETS`` when asked
    units: dict[str, int]  # labelled units in each of ``stats``
    mean: Tensor  # metrics.mean_credit_sums
    density: Tensor  # metrics.density_sums
    skew: Tensor  # metrics.length_skew_sums


@dataclass
class BatchPart:
    """Every recipe's part on one batch, with what the whole audit needs beside them."""

    unit: str
    trajectories: int
    groups: int
    recipes: list[RecipePart]
    confidence: Tensor  # [N] float64 stated confidence (NaN where none)
    correct: Tensor  # [N] float64 1/0


@dataclass
class Credited:
    """One recipe's credit spread over the batch's units (for the report's trajectory sections)."""

    kept: Tensor
    step_credit: Tensor
    call_credit: Tensor


def _spread(values: Tensor, positions: Tensor, size: int) -> Tensor:
    out = torch.full((size,), float("nan"), dtype=torch.float32, device=values.device)
    out[positions] = values.to(torch.float32)
    return out


def recipe_part(
    rollouts: Rollouts,
    recipe: Recipe,
    *,
    success_threshold: float = 1.0,
    subsets: bool | dict[str, Tensor] = True,
) -> tuple[RecipePart, Credited]:
    """Run ``recipe`` on the batch and take its audit statistics (and the credit per unit).
    ``subsets``: the breakdown's unit masks (``unit_masks``; computed here when True, none when False)."""
    r = rollouts
    result = recipe.run(r)
    kept, sub, credit = result.kept, result.rollouts, result.credit
    steps, calls = r.expand(kept)
    step_credit = _spread(credit.per_step(sub), steps, r.num_steps)
    call_credit = _spread(credit.per_call(sub), calls, r.num_calls)
    u = M.units(r, call_credit if r.call_label is not None else step_credit, success_threshold=success_threshold)
    stats = {"all": M.unit_stats(u, r.num_groups)}
    counts = {"all": int(u.label.numel())}
    if subsets is True:
        subsets = M.unit_subsets(r, u, success_threshold=success_threshold)
    if subsets:
        for name, mask in subsets.items():
            stats[name] = M.unit_stats(u.subset(mask), r.num_groups)
            counts[name] = int(mask.sum())
    part = RecipePart(
        kept=int(kept.numel()),
        stats=stats,
        units=counts,
        mean=M.mean_credit_sums(u),
        density=M.density_sums(sub, credit),
        skew=M.length_skew_sums(sub, credit),
    )
    return part, Credited(kept, step_credit, call_credit)


def batch_part(
    rollouts: Rollouts, recipes: Sequence[Recipe], *, success_threshold: float = 1.0, subsets: bool = True,
    keep_credit: bool = False,
) -> tuple[BatchPart, list[Credited]]:
    """Every recipe's part on one batch (and, with ``keep_credit``, each recipe's credit per unit)."""
    u = M.units(rollouts, Credit.zeros(rollouts), success_threshold=success_threshold)
    # the breakdown's masks depend on the units and groups, not on the credit: once for every recipe
    masks = M.unit_subsets(rollouts, u, success_threshold=success_threshold) if subsets else {}
    parts, credited = [], []
    for recipe in recipes:
        part, c = recipe_part(rollouts, recipe, success_threshold=success_threshold, subsets=masks)
        parts.append(part)
        if keep_credit:
            credited.append(c)
    q, correct = confidences(rollouts, success_threshold)
    return BatchPart(u.kind, rollouts.num_trajectories, rollouts.num_groups, parts, q, correct), credited


def finish_recipes(
    recipes: Sequence[Recipe], parts: Sequence[Sequence[RecipePart]], *, bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    """Each recipe's metrics from its parts on every chunk (``parts[k]``: recipe k's, in chunk order):
    the fields of ``RecipeAudit`` but the credit tensors. Every recipe and unit subset is bootstrapped
    under the same replicates."""
    names = list(parts[0][0].stats)
    stats = [M.UnitStats.concat([p.stats[n] for p in own]).group_stats() for own in parts for n in names]
    intervals = iter(M.many_intervals(stats, samples=bootstrap, seed=seed))
    points = iter([M.point_metrics(s) for s in stats])
    out = []
    for recipe, own in zip(recipes, parts, strict=True):
        figures: dict[str, dict[str, Any]] = {
            n: {"units": sum(p.units[n] for p in own), "metrics": next(points), "intervals": next(intervals)}
            for n in names
        }
        everything = figures.pop("all")
        kept = sum(p.kept for p in own)
        out.append({
            "name": recipe.name,
            "description": recipe.description,
            "metrics": everything["metrics"],
            "intervals": everything["intervals"],
            "mean_credit": M.mean_credit_from(_total(p.mean for p in own)),
            "density": M.density_from(_total(p.density for p in own)),
            "length_skew": M.length_skew_from(_total(p.skew for p in own), kept),
            "breakdown": {k: {**v, "intervals": {m: list(i) for m, i in v["intervals"].items()}}
                          for k, v in figures.items()},
            "num_kept": kept,
        })
    return out


def _total(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of per-chunk tensors, added one after the other in chunk order (so every engine that
    hands the same parts in the same order gets the same bits)."""
    total: Tensor = functools.reduce(torch.add, tensors)
    return total


def finish(
    parts: Sequence[BatchPart],
    recipes: Sequence[Recipe],
    sample: Rollouts,
    credited: Sequence[Credited],
    *,
    seconds: float,
    bootstrap: int,
    seed: int,
    success_threshold: float,
) -> Audit:
    """The ``Audit`` of every chunk's parts (in chunk order); ``sample`` and ``credited`` are the
    batch the report shows trajectory by trajectory and each recipe's credit on it."""
    units = {p.unit for p in parts}
    if len(units) > 1:
        raise ValueError(
            "chunks disagree on the audited unit (some have call labels, some only step labels): "
            "label every chunk the same way"
        )
    fields = finish_recipes(recipes, [[p.recipes[k] for p in parts] for k in range(len(recipes))],
                            bootstrap=bootstrap, seed=seed)
    audits = [RecipeAudit(kept=c.kept, step_credit=c.step_credit, call_credit=c.call_credit, **f)
              for f, c in zip(fields, credited, strict=True)]
    q = torch.cat([p.confidence for p in parts])
    correct = torch.cat([p.correct for p in parts])
    return Audit(
        sample, units.pop(), audits, seconds, bootstrap, success_threshold, calibration_of(q, correct),
        trajectories=sum(p.trajectories for p in parts), groups=sum(p.groups for p in parts), chunks=len(parts),
        failed=int((correct == 0).sum()),
    )


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
    loaded = [Recipe.load(spec) for spec in recipes]
    part, credited = batch_part(rollouts, loaded, success_threshold=success_threshold, subsets=subsets,
                                keep_credit=True)
    return finish([part], loaded, rollouts, credited, seconds=time.perf_counter() - start, bootstrap=bootstrap,
                  seed=seed, success_threshold=success_threshold)


def confidences(rollouts: Rollouts, success_threshold: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per trajectory: the stated confidence (column, else the last ``<confidence>`` tag; NaN where
    none is stated) and whether it succeeded (1.0 / 0.0), float64."""
    from stepcredit.shaping.calibration import stated_confidence

    q = stated_confidence(rollouts, "column" if rollouts.confidence is not None else "tag")
    return q.double().cpu(), (rollouts.outcome >= success_threshold).double().cpu()


def calibration_of(q: Tensor, correct: Tensor) -> dict[str, float] | None:
    """Calibration of the stated confidences ``q`` against ``correct`` (see ``calibration``)."""
    from stepcredit.auditing.calibration import brier_score, confidence_auroc, expected_calibration_error

    stated = torch.isfinite(q) & (q >= 0) & (q <= 1)
    if not bool(stated.any()):
        return None
    return {
        "stated": int(stated.sum()),
        "brier_score": brier_score(q, correct),
        "ece": expected_calibration_error(q, correct),
        "auroc": confidence_auroc(q, correct),
    }


def calibration(rollouts: Rollouts, success_threshold: float = 1.0) -> dict[str, float] | None:
    """Calibration of the stated confidences (column, else the last ``<confidence>`` tag), or None when
    no trajectory states a usable one: Brier score, ECE (10 bins), AUROC, and how many stated one."""
    return calibration_of(*confidences(rollouts, success_threshold))
