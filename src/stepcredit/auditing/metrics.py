"""Credit metrics against labels (+1 correct / 0 neutral / −1 wrong). Labels are read here only.

The audited *units* are the labelled tool calls when the batch has call labels (their credit is the
credit on the call's tokens, ``Credit.per_call``), else the labelled steps (``Credit.per_step``).

Every headline figure is a ratio of sums over units, so it can be recomputed for any reweighting of
the units; the bootstrap (over groups, so that a task's correlated trajectories move together) draws
group multiplicities and evaluates all replicates at once as matrix products.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.credit import Credit
from stepcredit.rollouts import Rollouts


@dataclass(frozen=True)
class Units:
    """The labelled units of a batch with their credit."""

    kind: str  # "call" or "step"
    label: Tensor  # [U] int8
    credit: Tensor  # [U] float (NaN: the recipe did not credit this unit, e.g. its trajectory was dropped)
    failed: Tensor  # [U] bool: the unit's trajectory failed
    group: Tensor  # [U] group of the unit's trajectory
    traj: Tensor  # [U] trajectory of the unit


def units(rollouts: Rollouts, credit: Credit | Tensor, *, success_threshold: float = 1.0) -> Units:
    """Units of ``rollouts``; ``credit`` is a ``Credit`` or an already computed per-unit tensor."""
    r = rollouts
    failed = r.outcome < success_threshold
    if r.call_label is not None:
        traj = r.call_traj
        values = credit.per_call(r) if isinstance(credit, Credit) else credit
        return Units("call", r.call_label, values, failed[traj], r.group[traj], traj)
    if r.label is not None:
        values = credit.per_step(r) if isinstance(credit, Credit) else credit
        return Units("step", r.label, values, failed[r.step_traj], r.step_group, r.step_traj)
    raise ValueError("auditing credit needs call or step labels in the rollouts")


# ------------------------------------------------------------------------------ weighted primitives
def _rate(weights: Tensor, select: Tensor, hit: Tensor) -> Tensor:
    """``Σ w·[select & hit] / Σ w·[select]`` for every row of ``weights`` (B, U); NaN when empty."""
    den = weights @ select.double()
    num = weights @ (select & hit).double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def weighted_auroc(scores: Tensor, positive: Tensor, negative: Tensor, weights: Tensor) -> Tensor:
    """AUROC of ``scores`` for positives vs negatives, P(s⁺ > s⁻) + ½ P(s⁺ = s⁻), with unit weights
    ``(B, U)``; one value per row, NaN when a class has no weight."""
    scores = scores.double()
    uniq, bins = torch.unique(scores, return_inverse=True)
    b = weights.shape[0]
    neg_w = torch.zeros(b, uniq.numel(), dtype=torch.float64).index_add_(1, bins, weights * negative.double())
    below = torch.cumsum(neg_w, 1) - neg_w  # negative weight strictly below each score
    pos_w = weights * positive.double()
    num = (pos_w * (below[:, bins] + 0.5 * neg_w[:, bins])).sum(1)
    den = pos_w.sum(1) * neg_w.sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` mask (Mann–Whitney, ties ½)."""
    scores = scores.double().flatten()
    positive = positive.bool().flatten()
    w = torch.ones(1, scores.numel(), dtype=torch.float64)
    return float(weighted_auroc(scores, positive, ~positive, w)[0])


# ------------------------------------------------------------------------------ headline metrics
HEADLINE = ("blame", "false_praise", "bsa_failed", "bsa_all", "auroc_failed", "auroc_all")


def headline(u: Units, weights: Tensor) -> dict[str, Tensor]:
    """The headline metrics for unit weights ``(B, U)`` (one value per row):

    * ``blame``: share of +1 units in failed trajectories with credit < 0;
    * ``false_praise``: share of −1 units in successful trajectories with credit > 0;
    * ``bsa_failed`` / ``bsa_all``: balanced sign accuracy, ½ [P(credit > 0 | +1) + P(credit < 0 | −1)]
      over units of failed trajectories / of all trajectories — a constant shift cannot raise it;
    * ``auroc_failed`` / ``auroc_all``: AUROC of credit, +1 vs −1 units.
    Units the recipe did not credit (NaN) are left out.
    """
    ok = ~torch.isnan(u.credit)
    credit = torch.nan_to_num(u.credit)
    good, bad = (u.label == 1) & ok, (u.label == -1) & ok
    pos, neg = credit > 0, credit < 0
    out = {
        "blame": _rate(weights, good & u.failed, neg),
        "false_praise": _rate(weights, bad & ~u.failed, pos),
        "bsa_failed": 0.5 * (_rate(weights, good & u.failed, pos) + _rate(weights, bad & u.failed, neg)),
        "bsa_all": 0.5 * (_rate(weights, good, pos) + _rate(weights, bad, neg)),
        "auroc_failed": weighted_auroc(credit, good & u.failed, bad & u.failed, weights),
        "auroc_all": weighted_auroc(credit, good, bad, weights),
    }
    return out


def bootstrap_intervals(
    u: Units, num_groups: int, *, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the headline metrics over ``samples`` bootstrap resamples of the groups
    (each replicate draws ``num_groups`` groups with replacement; seeded)."""
    if samples <= 0:
        return {k: (float("nan"), float("nan")) for k in HEADLINE}
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(num_groups, (samples, num_groups), generator=gen)
    counts = torch.zeros(samples, num_groups, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(samples, num_groups, dtype=torch.float64)
    )
    values = headline(u, counts[:, u.group])
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for k, v in values.items():
        v = v[~torch.isnan(v)]
        out[k] = (float(torch.quantile(v, lo)), float(torch.quantile(v, hi))) if v.numel() else (float("nan"),) * 2
    return out


def blame_rate(rollouts: Rollouts, credit: Credit, *, success_threshold: float = 1.0) -> dict[str, Any]:
    """Share of correct (+1) units in *failed* trajectories whose credit is negative, with counts:
    ``{"unit", "n", "blamed", "rate", "mean_credit"}`` (rate and mean ``None`` when there is none)."""
    u = units(rollouts, credit, success_threshold=success_threshold)
    pick = (u.label == 1) & u.failed & ~torch.isnan(u.credit)
    n = int(pick.sum())
    blamed = int((u.credit[pick] < 0).sum())
    return {
        "unit": u.kind,
        "n": n,
        "blamed": blamed,
        "rate": blamed / n if n else None,
        "mean_credit": float(u.credit[pick].double().mean()) if n else None,
    }


def balanced_sign_accuracy(
    rollouts: Rollouts, credit: Credit, *, failed_only: bool = True, success_threshold: float = 1.0
) -> float:
    """½ [P(credit > 0 | +1) + P(credit < 0 | −1)] over the units of failed trajectories (or all)."""
    u = units(rollouts, credit, success_threshold=success_threshold)
    w = torch.ones(1, u.label.numel(), dtype=torch.float64)
    return float(headline(u, w)["bsa_failed" if failed_only else "bsa_all"][0])


def mean_credit_table(u: Units) -> dict[str, dict[str, dict[str, float | int]]]:
    """Mean credit and count of units by label (+1 / 0 / −1) × outcome (failure / success)."""
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    ok = ~torch.isnan(u.credit)
    for name, value in (("+1", 1), ("0", 0), ("-1", -1)):
        row = {}
        for outcome, mask in (("failure", u.failed), ("success", ~u.failed)):
            pick = (u.label == value) & mask & ok
            n = int(pick.sum())
            row[outcome] = {"n": n, "mean": float(u.credit[pick].double().mean()) if n else float("nan")}
        table[name] = row
    return table


def signal_density(rollouts: Rollouts, credit: Credit) -> dict[str, float | None]:
    """Share of steps (and of response tokens, when the batch has them) with non-zero credit, and the
    share of groups whose outcomes are all equal (GRPO gives them no signal)."""
    r = rollouts
    steps = credit.per_step(r)
    lo, hi = segments.segment_min_max(r.outcome, r.group, r.num_groups)
    out: dict[str, float | None] = {
        "steps_nonzero": float((steps != 0).double().mean()) if r.num_steps else None,
        "tokens_nonzero": None,
        "zero_variance_groups": float((lo == hi).double().mean()) if r.num_groups else None,
    }
    if r.response_mask is not None:
        tokens = credit.to_tokens(r)[r.response_mask]
        out["tokens_nonzero"] = float((tokens != 0).double().mean()) if tokens.numel() else None
    return out


DEFAULT_BUCKETS = (1, 6, 11, 21, 51)


def length_skew(rollouts: Rollouts, credit: Credit, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> list[dict[str, Any]]:
    """Share of the total |credit| (summed over steps) carried by trajectories in each step-count
    bucket, next to their share of trajectories — the "more turns, more weight" bias."""
    r = rollouts
    mass = segments.segment_sum(credit.per_step(r).abs().double(), r.step_traj, r.num_trajectories)
    total = float(mass.sum())
    n = r.steps_per_trajectory
    edges = [*buckets, None]
    rows = []
    for lo, hi in itertools.pairwise(edges):
        assert lo is not None
        pick = (n >= lo) & (n < hi) if hi is not None else n >= lo
        name = f"{lo}–{hi - 1}" if hi is not None else f"{lo}+"
        rows.append(
            {
                "steps": name,
                "trajectories": int(pick.sum()),
                "trajectory_share": float(pick.double().mean()) if r.num_trajectories else 0.0,
                "credit_share": float(mass[pick].sum() / total) if total > 0 else 0.0,
            }
        )
    return rows
