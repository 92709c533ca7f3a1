"""Credit metrics against labels (+1 correct / 0 neutral / −1 wrong). Labels are read here only.

The audited *units* are the labelled tool calls when the batch has call labels (their credit is the
credit on the call's tokens, ``Credit.per_call``), else the labelled steps (``Credit.per_step``).

Every headline figure is a ratio of sums over units, so it can be recomputed for any reweighting of
the units. The bootstrap resamples groups (so that a task's correlated trajectories move together):
it draws group multiplicities and evaluates the replicates from per-group sufficient statistics —
per-group sums for the rates, per-group score histograms for the AUROC — so its memory grows with
groups and units, never with units × replicates.
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


    def subset(self, mask: Tensor) -> Units:
        """The units where ``mask`` holds (group ids kept, so group bootstraps still apply)."""
        return Units(self.kind, self.label[mask], self.credit[mask], self.failed[mask], self.group[mask],
                     self.traj[mask])


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


# ------------------------------------------------------------------------------ unit subsets
SUBSETS = ("without_always_made", "mixed", "all_fail", "all_success")


def always_made(rollouts: Rollouts, kind: str) -> Tensor:
    """Per unit (``kind`` "call" or "step"): is it something *every* trajectory of its group did — the
    same call (by effect: tool name and canonical arguments, or the same argument values with the same
    result, ``tool.call_keys``), or for step units the same action text? Such units
    (reading the user record, say) earn consensus without telling anything about the task; a group
    with one trajectory makes all its units always-made."""
    from stepcredit.estimators.tool import call_keys
    from stepcredit.rollouts import text_keys
    from stepcredit.rollouts._texts import step_action_texts

    r = rollouts
    if kind == "call":
        keys, k = call_keys(r, "effect")
        traj = r.call_traj
    else:
        codes = text_keys(step_action_texts(r), r.step_group.tolist()).to(r.device)
        keys, k = segments.unique_pairs(r.step_group, codes)
        traj = r.step_traj
    pair, num_pairs = segments.unique_pairs(keys, traj, a_size=k)
    (pair_key,) = segments.pair_members(pair, num_pairs, keys)
    size = segments.segment_count(r.group, r.num_groups)
    return segments.segment_count(pair_key, k)[keys] == size[r.group[traj]]


def unit_subsets(rollouts: Rollouts, u: Units, *, success_threshold: float = 1.0) -> dict[str, Tensor]:
    """Masks over the units for the audit's breakdown (``SUBSETS``): units that are not always made
    (``always_made``), and units by the type of their group — ``mixed`` (some trajectories succeeded,
    some failed), ``all_fail``, ``all_success`` (where outcome-only credit is exactly 0)."""
    r = rollouts
    wins, size = segments.group_wins(r.outcome >= success_threshold, r.group, r.num_groups)
    kind = torch.where(wins == 0, 0, torch.where(wins == size, 2, 1))[u.group]
    return {
        "without_always_made": ~always_made(r, u.kind),
        "mixed": kind == 1,
        "all_fail": kind == 0,
        "all_success": kind == 2,
    }


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


def _parts(u: Units) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, tuple[Tensor, Tensor]]]:
    """The unit masks behind the headline: ``rates[name] = (select, hit)`` (a share of the selected units)
    and ``aurocs[name] = (positive, negative)``. Units the recipe did not credit (NaN) are in neither."""
    ok = ~torch.isnan(u.credit)
    credit = torch.nan_to_num(u.credit)
    good, bad = (u.label == 1) & ok, (u.label == -1) & ok
    pos, neg = credit > 0, credit < 0
    rates = {
        "blame": (good & u.failed, neg),
        "false_praise": (bad & ~u.failed, pos),
        "sens_failed": (good & u.failed, pos),
        "spec_failed": (bad & u.failed, neg),
        "sens_all": (good, pos),
        "spec_all": (bad, neg),
    }
    aurocs = {"auroc_failed": (good & u.failed, bad & u.failed), "auroc_all": (good, bad)}
    return rates, aurocs


def _combine(rates: dict[str, Tensor], aurocs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        "blame": rates["blame"],
        "false_praise": rates["false_praise"],
        "bsa_failed": 0.5 * (rates["sens_failed"] + rates["spec_failed"]),
        "bsa_all": 0.5 * (rates["sens_all"] + rates["spec_all"]),
        **aurocs,
    }


def headline(u: Units, weights: Tensor) -> dict[str, Tensor]:
    """The headline metrics for unit weights ``(B, U)`` (one value per row):

    * ``blame``: share of +1 units in failed trajectories with credit < 0;
    * ``false_praise``: share of −1 units in successful trajectories with credit > 0;
    * ``bsa_failed`` / ``bsa_all``: balanced sign accuracy, ½ [P(credit > 0 | +1) + P(credit < 0 | −1)]
      over units of failed trajectories / of all trajectories — a constant shift cannot raise it;
    * ``auroc_failed`` / ``auroc_all``: AUROC of credit, +1 vs −1 units.
    Units the recipe did not credit (NaN) are left out. ``weights`` is dense over units: for many
    rows of group weights use ``group_sums`` and ``group_headline`` instead.
    """
    rates, aurocs = _parts(u)
    credit = torch.nan_to_num(u.credit)
    return _combine(
        {k: _rate(weights, select, hit) for k, (select, hit) in rates.items()},
        {k: weighted_auroc(credit, p, n, weights) for k, (p, n) in aurocs.items()},
    )


# ------------------------------------------------------------------------------ group sufficient statistics
_CHUNK_ELEMENTS = 1 << 22  # float64 elements in one (replicates × cells) temporary of the AUROC: 32 MiB


@dataclass(frozen=True)
class AurocCells:
    """The AUROC's sufficient statistic per group: how many positive / negative units each group has
    at each distinct score. A *cell* is one (group, score) pair holding units of the class."""

    num_bins: int  # distinct scores among the positive and negative units
    pos_group: Tensor  # [Rp] group of each positive cell
    pos_bin: Tensor  # [Rp] rank of its score among the distinct scores
    pos_count: Tensor  # [Rp] float64 positives in the cell
    neg_group: Tensor  # [Rn]
    neg_bin: Tensor  # [Rn]
    neg_count: Tensor  # [Rn] float64
    pos_total: Tensor  # [G] float64 positives per group
    neg_total: Tensor  # [G] float64 negatives per group


@dataclass(frozen=True)
class GroupStats:
    """Per-group sufficient statistics of the headline metrics (see ``group_sums``)."""

    num_groups: int
    rate_sums: Tensor  # [G, 2·K] float64: per rate, the group's Σ[select & hit] then Σ[select]
    rate_names: tuple[str, ...]  # the K rates, in the column order of ``rate_sums``
    aurocs: dict[str, AurocCells]


def _cells(score_bin: Tensor, group: Tensor, pick: Tensor, num_bins: int, num_groups: int) -> tuple[Tensor, ...]:
    """(group, bin, count) of the distinct (group, score) cells of the units in ``pick``."""
    width = max(num_bins, 1)
    key = group[pick] * width + score_bin[pick]
    cell, count = torch.unique(key, return_counts=True)
    total = torch.zeros(num_groups, dtype=torch.float64, device=group.device)
    total.index_add_(0, group[pick], torch.ones_like(key).double())
    return cell // width, cell % width, count.double(), total


def group_sums(u: Units, num_groups: int) -> GroupStats:
    """Everything the headline metrics need about each group, so that a reweighting of the *groups*
    (a bootstrap replicate) is evaluated without going back to the units.

    Every rate is ``Σ_u w_u [select & hit] / Σ_u w_u [select]``; with unit weights that are group
    weights, ``w_u = c[group(u)]``, both sums are ``c @ S`` for per-group sums ``S`` ([G] each).
    The AUROC, ``Σ_{u+, v−} w_u w_v ([s_u > s_v] + ½[s_u = s_v]) / (Σ w_u⁺ · Σ w_v⁻)``, depends on a
    group only through how many positives and negatives it has at each score: the group's score
    histogram per class (``AurocCells``; at most one cell per unit, fewer where scores tie within a
    group, as outcome-level credit does). Memory is O(U) once, independent of the number of replicates.
    """
    rates, aurocs = _parts(u)
    group = u.group.long()
    cols = []
    for select, hit in rates.values():
        cols += [(select & hit).double(), select.double()]
    per_unit = torch.stack(cols, 1)
    sums = torch.zeros(num_groups, per_unit.shape[1], dtype=torch.float64, device=group.device)
    sums.index_add_(0, group, per_unit)
    del per_unit
    credit = torch.nan_to_num(u.credit).double()
    cells = {}
    for name, (positive, negative) in aurocs.items():
        uniq, score_bin = torch.unique(credit[positive | negative], return_inverse=True)
        bins = torch.zeros_like(group)
        bins[positive | negative] = score_bin
        pg, pb, pc, pt = _cells(bins, group, positive, uniq.numel(), num_groups)
        ng, nb, nc, nt = _cells(bins, group, negative, uniq.numel(), num_groups)
        cells[name] = AurocCells(uniq.numel(), pg, pb, pc, ng, nb, nc, pt, nt)
    return GroupStats(num_groups, sums, tuple(rates), cells)


def _cells_auroc(a: AurocCells, counts: Tensor, chunk_elements: int) -> Tensor:
    """The AUROC for every row of group weights ``counts`` (B, G), replicates in chunks."""
    b = counts.shape[0]
    den = (counts @ a.pos_total) * (counts @ a.neg_total)
    num = torch.zeros(b, dtype=torch.float64, device=counts.device)
    if a.pos_count.numel() and a.neg_count.numel():
        step = max(1, chunk_elements // max(a.num_bins, a.pos_count.numel(), a.neg_count.numel()))
        for lo in range(0, b, step):  # chunks of replicates, each a few vectorized passes over the cells
            c = counts[lo : lo + step]
            neg_w = torch.zeros(c.shape[0], a.num_bins, dtype=torch.float64, device=c.device)
            neg_w.index_add_(1, a.neg_bin, c.index_select(1, a.neg_group).mul_(a.neg_count))
            mid = torch.cumsum(neg_w, 1).sub_(neg_w, alpha=0.5)  # negative weight below + ½ at each score
            del neg_w
            num[lo : lo + step] = c.index_select(1, a.pos_group).mul_(mid.index_select(1, a.pos_bin)) @ a.pos_count
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def group_headline(stats: GroupStats, counts: Tensor, *, chunk_elements: int = _CHUNK_ELEMENTS) -> dict[str, Tensor]:
    """The headline metrics (as ``headline``) for every row of *group* weights ``counts`` (B, G).

    Rates: ``(counts @ S_hit) / (counts @ S_select)``, one (B, G) × (G, 2K) product. AUROCs: per
    chunk of replicates, the negative weight at each distinct score is scattered from the cells, its
    running sum read back at the positive cells — (chunk × cells) temporaries of at most
    ``chunk_elements`` doubles (32 MiB by default), whatever the number of replicates.

    All weights are integers and every sum is a (half-)integer below 2⁵³, so the sums are exact and the
    metrics equal ``headline(u, counts[:, u.group])`` — the dense (B, U) evaluation — bit for bit.

    Not the G × G matrix ``C[g, h] = Σ_{u+ ∈ g, v− ∈ h} [s_u > s_v] + ½[s_u = s_v]`` (numerator
    ``Σ_b c_b C c_bᵀ``): at 12,500 groups it is 1.25 GB by itself, takes O(U·G) to build and
    O(B·G²) ≈ 1.6·10¹¹ multiply-adds to evaluate for 1,000 replicates; the cells take O(U) memory and
    O(B·U) time.
    """
    counts = counts.to(stats.rate_sums.device, torch.float64)
    sums = counts @ stats.rate_sums
    num, den = sums[:, 0::2], sums[:, 1::2]
    rate = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
    rates = {k: rate[:, i] for i, k in enumerate(stats.rate_names)}
    aurocs = {k: _cells_auroc(a, counts, chunk_elements) for k, a in stats.aurocs.items()}
    return _combine(rates, aurocs)


def bootstrap_counts(num_groups: int, samples: int, seed: int) -> Tensor:
    """``(samples, num_groups)`` float64: how often each group is drawn in each replicate, every
    replicate drawing ``num_groups`` groups with replacement (seeded; drawn on the CPU, so that a seed
    gives the same replicates on every device)."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(num_groups, (samples, num_groups), generator=gen)
    one = torch.ones((), dtype=torch.float64).expand(samples, num_groups)
    return torch.zeros(samples, num_groups, dtype=torch.float64).scatter_add_(1, draws, one)


def bootstrap_intervals(
    u: Units,
    num_groups: int,
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the headline metrics over ``samples`` bootstrap resamples of the groups
    (each replicate draws ``num_groups`` groups with replacement; seeded).

    Replicates are evaluated from per-group sufficient statistics (``group_sums``,
    ``group_headline``), never as a (samples × units) matrix. Memory: the (samples × groups) draw
    counts (8 bytes each: 100 MB for 1,000 × 12,500 groups), the per-unit statistics (O(U)) and
    the AUROC's chunk temporaries (``chunk_elements`` doubles each) — 100k trajectories with 1,000
    replicates fit in well under 2 GiB (``benchmarks/RESULTS.md``). Time O(samples × units).
    """
    if samples <= 0:
        return {k: (float("nan"), float("nan")) for k in HEADLINE}
    counts = bootstrap_counts(num_groups, samples, seed).to(u.group.device)
    values = group_headline(group_sums(u, num_groups), counts, chunk_elements=chunk_elements)
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
