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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit


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
    from stepcredit.core import text_keys
    from stepcredit.estimators.tool import call_keys
    from stepcredit.views import step_action_texts

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


@dataclass(frozen=True)
class ScoreCells:
    """One class of an AUROC (positives or negatives) as cells: the distinct (group, score) pairs holding
    units of the class, with how many units each holds, and the class's units per group. Unlike
    ``AurocCells`` it keeps the scores themselves, so the cells of several batches concatenate
    (``UnitStats.concat``) before the scores are ranked together."""

    group: Tensor  # [R] int64
    score: Tensor  # [R] float64
    count: Tensor  # [R] float64
    total: Tensor  # [G] float64


def _score_cells(credit: Tensor, group: Tensor, pick: Tensor, num_groups: int) -> ScoreCells:
    g, score = group[pick], credit[pick]
    uniq, score_bin = torch.unique(score, return_inverse=True)
    cell, num_cells = segments.unique_pairs(g, score_bin, a_size=num_groups)
    cell_group, cell_bin = segments.pair_members(cell, num_cells, g, score_bin)
    count = segments.segment_count(cell, num_cells).double()
    return ScoreCells(cell_group, uniq[cell_bin], count, segments.segment_count(g, num_groups).double())


@dataclass(frozen=True)
class UnitStats:
    """The headline's sufficient statistics per group, in a form that concatenates: the statistics of
    a batch streamed chunk by chunk are ``UnitStats.concat`` of the chunks' (groups numbered on), and
    ``group_stats`` ranks the scores of all of them together. Every entry is an integer count, so
    the concatenation loses nothing: the metrics equal those of the whole batch at once, bit for bit."""

    num_groups: int
    rate_sums: Tensor  # [G, 2·K] float64: per rate, the group's Σ[select & hit] then Σ[select]
    rate_names: tuple[str, ...]
    cells: dict[str, tuple[ScoreCells, ScoreCells]]  # per AUROC: (positive, negative)

    @staticmethod
    def concat(parts: list[UnitStats]) -> UnitStats:
        """The statistics of the parts' groups one after the other (part k's group g becomes
        ``g + Σ_{j<k} num_groups_j``)."""
        if not parts:
            raise ValueError("UnitStats.concat needs at least one part")
        if len(parts) == 1:
            return parts[0]
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + p.num_groups)

        def cat(cls: int, name: str) -> ScoreCells:
            pieces = [p.cells[name][cls] for p in parts]
            return ScoreCells(
                torch.cat([c.group + off for c, off in zip(pieces, offsets, strict=False)]),
                torch.cat([c.score for c in pieces]),
                torch.cat([c.count for c in pieces]),
                torch.cat([c.total for c in pieces]),
            )

        first = parts[0]
        return UnitStats(
            offsets[-1],
            torch.cat([p.rate_sums for p in parts]),
            first.rate_names,
            {name: (cat(0, name), cat(1, name)) for name in first.cells},
        )

    def group_stats(self) -> GroupStats:
        """The evaluation form (``GroupStats``): scores replaced by their rank among the distinct
        scores of both classes."""
        aurocs = {}
        for name, (pos, neg) in self.cells.items():
            uniq, bins = torch.unique(torch.cat([pos.score, neg.score]), return_inverse=True)
            r = pos.score.numel()
            aurocs[name] = AurocCells(
                uniq.numel(), pos.group, bins[:r], pos.count, neg.group, bins[r:], neg.count, pos.total, neg.total
            )
        return GroupStats(self.num_groups, self.rate_sums, self.rate_names, aurocs)


def unit_stats(u: Units, num_groups: int) -> UnitStats:
    """Per-group sufficient statistics of the headline metrics of ``u`` (see ``group_sums``), in the
    concatenable form."""
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
    cells = {
        name: (_score_cells(credit, group, positive, num_groups), _score_cells(credit, group, negative, num_groups))
        for name, (positive, negative) in aurocs.items()
    }
    return UnitStats(num_groups, sums, tuple(rates), cells)


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
    return unit_stats(u, num_groups).group_stats()


def _cells_auroc(a: AurocCells, counts: Tensor, chunk_elements: int) -> Tensor:
    """The AUROC for every row of group weights ``counts`` (B, G), replicates in chunks.

    The negative cells, sorted by score once, are weighted and summed cumulatively; a positive cell's
    score then reads "negative weight below it" and "… up to and with it" at two precomputed positions
    of that running sum (their mean: below + ½ tied). Every pass is over contiguous rows of a
    (cells × replicates) temporary."""
    b = counts.shape[0]
    den = (counts @ a.pos_total) * (counts @ a.neg_total)
    num = torch.zeros(b, dtype=torch.float64, device=counts.device)
    if a.pos_count.numel() and a.neg_count.numel():
        order = torch.argsort(a.neg_bin, stable=True)
        neg_group, neg_count, neg_bin = a.neg_group[order], a.neg_count[order, None], a.neg_bin[order]
        below = torch.searchsorted(neg_bin, a.pos_bin)  # running-sum row before the first tie
        upto = torch.searchsorted(neg_bin, a.pos_bin, right=True)  # … after the last tie
        step = max(1, chunk_elements // max(a.pos_count.numel(), a.neg_count.numel() + 1))
        for lo in range(0, b, step):  # chunks of replicates, each a few vectorized passes over the cells
            c = counts[lo : lo + step].T.contiguous()  # (G, chunk): a cell's weights are one contiguous row
            running = torch.zeros(neg_group.numel() + 1, c.shape[1], dtype=torch.float64, device=c.device)
            torch.cumsum(c.index_select(0, neg_group).mul_(neg_count), 0, out=running[1:])
            mid = running.index_select(0, below).add_(running.index_select(0, upto)).mul_(0.5)
            del running
            num[lo : lo + step] = a.pos_count @ c.index_select(0, a.pos_group).mul_(mid)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def group_headline(stats: GroupStats, counts: Tensor, *, chunk_elements: int = _CHUNK_ELEMENTS) -> dict[str, Tensor]:
    """The headline metrics (as ``headline``) for every row of *group* weights ``counts`` (B, G).

    Rates: ``(counts @ S_hit) / (counts @ S_select)``, one (B, G) × (G, 2K) product. AUROCs: per
    chunk of replicates, the running sum of the negative cells' weights in score order is read back
    at the positive cells' scores (``_cells_auroc``) — (cells × chunk) temporaries of at most
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


def bootstrap_count_chunks(num_groups: int, samples: int, seed: int, *, rows: int | None = None) -> Iterator[Tensor]:
    """The rows of ``bootstrap_counts`` in consecutive chunks of at most ``rows`` replicates (default:
    as many as fit ``_CHUNK_ELEMENTS`` doubles), drawn one after the other from the one seeded
    generator — so their concatenation *is* ``bootstrap_counts(num_groups, samples, seed)``, while
    only one chunk is held at a time."""
    gen = torch.Generator().manual_seed(seed)
    step = rows if rows is not None else max(1, _CHUNK_ELEMENTS // max(num_groups, 1))
    for lo in range(0, samples, step):
        n = min(step, samples - lo)
        draws = torch.randint(num_groups, (n, num_groups), generator=gen)
        one = torch.ones((), dtype=torch.float64).expand(n, num_groups)
        yield torch.zeros(n, num_groups, dtype=torch.float64).scatter_add_(1, draws, one)


def bootstrap_counts(num_groups: int, samples: int, seed: int) -> Tensor:
    """``(samples, num_groups)`` float64: how often each group is drawn in each replicate, every
    replicate drawing ``num_groups`` groups with replacement (seeded; drawn on the CPU, so that a seed
    gives the same replicates on every device)."""
    empty = torch.zeros(0, num_groups, dtype=torch.float64)
    return next(bootstrap_count_chunks(num_groups, samples, seed, rows=max(samples, 1)), empty)


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
    (each replicate draws ``num_groups`` groups with replacement; seeded): ``many_intervals`` of
    ``group_sums(u, num_groups)`` alone."""
    return many_intervals([group_sums(u, num_groups)], samples=samples, seed=seed, level=level,
                          chunk_elements=chunk_elements)[0]


def many_intervals(
    stats: Sequence[GroupStats],
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> list[dict[str, tuple[float, float]]]:
    """Percentile intervals of the headline metrics over ``samples`` bootstrap resamples of the groups,
    for several statistics of the same groups (recipes, unit subsets) under the same replicates, each
    chunk of replicates drawn once for all of them.

    Replicates are evaluated from per-group sufficient statistics (``group_headline``), never as a
    (samples × units) matrix, and drawn in chunks of replicates (``bootstrap_count_chunks``): memory
    is the per-unit statistics (O(U)) plus (replicates-in-a-chunk × groups) and the AUROC's
    temporaries, ``chunk_elements`` doubles each — whatever the number of replicates or groups.
    Time O(samples × units).
    """
    if samples <= 0 or not stats:
        return [{k: (float("nan"), float("nan")) for k in HEADLINE} for _ in stats]
    groups = stats[0].num_groups
    if any(s.num_groups != groups for s in stats):
        raise ValueError("many_intervals needs statistics of the same groups")
    rows = max(1, chunk_elements // max(groups, 1))
    values: list[list[dict[str, Tensor]]] = [[] for _ in stats]
    for counts in bootstrap_count_chunks(groups, samples, seed, rows=rows):
        for s, out in zip(stats, values, strict=True):
            out.append(group_headline(s, counts.to(s.rate_sums.device), chunk_elements=chunk_elements))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    result = []
    for parts in values:
        intervals = {}
        for k in parts[0]:
            v = torch.cat([p[k] for p in parts])
            v = v[~torch.isnan(v)]
            intervals[k] = (float(torch.quantile(v, lo)), float(torch.quantile(v, hi))) if v.numel() else (
                float("nan"), float("nan"))
        result.append(intervals)
    return result


def point_metrics(stats: GroupStats) -> dict[str, float]:
    """The headline metrics of every unit once (all group weights 1)."""
    ones = torch.ones(1, stats.num_groups, dtype=torch.float64, device=stats.rate_sums.device)
    return {k: float(v[0]) for k, v in group_headline(stats, ones).items()}


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


_LABELS = (("+1", 1), ("0", 0), ("-1", -1))
_OUTCOMES = ("failure", "success")


def mean_credit_sums(u: Units) -> Tensor:
    """``[3, 2, 2]`` float64: per label (+1 / 0 / −1) × outcome (failure / success), the number of
    credited units and the sum of their credit — what ``mean_credit_table`` needs, and it adds up
    across chunks of a stream."""
    ok = ~torch.isnan(u.credit)
    cell = ((1 - u.label.long()) * 2 + (~u.failed).long())[ok]  # label +1 / 0 / −1 × failure / success
    count = segments.segment_count(cell, 6).double()
    total = segments.segment_sum(u.credit[ok].double(), cell, 6)
    return torch.stack([count, total], -1).view(3, 2, 2).cpu()


def mean_credit_from(sums: Tensor) -> dict[str, dict[str, dict[str, float | int]]]:
    """``mean_credit_table`` from ``mean_credit_sums`` (of one batch, or summed over chunks)."""
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    for i, (name, _) in enumerate(_LABELS):
        table[name] = {}
        for j, outcome in enumerate(_OUTCOMES):
            n, total = int(sums[i, j, 0]), float(sums[i, j, 1])
            table[name][outcome] = {"n": n, "mean": total / n if n else float("nan")}
    return table


def mean_credit_table(u: Units) -> dict[str, dict[str, dict[str, float | int]]]:
    """Mean credit and count of units by label (+1 / 0 / −1) × outcome (failure / success)."""
    return mean_credit_from(mean_credit_sums(u))


def density_sums(rollouts: Rollouts, credit: Credit) -> Tensor:
    """``[6]`` float64 counts behind ``signal_density``: steps with non-zero credit, steps, response
    tokens with non-zero credit, response tokens (both −1 without token spans), groups whose outcomes
    are all equal, groups."""
    r = rollouts
    lo, hi = segments.segment_min_max(r.outcome, r.group, r.num_groups)
    tokens_nonzero, tokens = -1.0, -1.0
    if r.response_mask is not None:
        values = credit.to_tokens(r)[r.response_mask]
        tokens_nonzero, tokens = float((values != 0).sum()), float(values.numel())
    return torch.tensor(
        [float((credit.per_step(r) != 0).sum()), float(r.num_steps), tokens_nonzero, tokens,
         float((lo == hi).sum()), float(r.num_groups)],
        dtype=torch.float64,
    )


def density_from(sums: Tensor) -> dict[str, float | None]:
    """``signal_density`` from ``density_sums`` (of one batch, or summed over chunks)."""
    nz, steps, tnz, tokens, flat, groups = (float(x) for x in sums)

    def share(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    return {
        "steps_nonzero": share(nz, steps),
        "tokens_nonzero": share(tnz, tokens) if tokens >= 0 else None,
        "zero_variance_groups": share(flat, groups),
    }


def signal_density(rollouts: Rollouts, credit: Credit) -> dict[str, float | None]:
    """Share of steps (and of response tokens, when the batch has them) with non-zero credit, and the
    share of groups whose outcomes are all equal (GRPO gives them no signal)."""
    return density_from(density_sums(rollouts, credit))


DEFAULT_BUCKETS = (1, 6, 11, 21, 51)


def _bucket_names(buckets: tuple[int, ...]) -> list[str]:
    ends: list[int | None] = [*buckets[1:], None]
    return [f"{lo}–{hi - 1}" if hi is not None else f"{lo}+" for lo, hi in zip(buckets, ends, strict=True)]


def length_skew_sums(rollouts: Rollouts, credit: Credit, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> Tensor:
    """``[len(buckets), 2]`` float64 behind ``length_skew``: per step-count bucket, the trajectories in
    it and the |credit| they carry (summed over their steps)."""
    r = rollouts
    mass = segments.segment_sum(credit.per_step(r).abs().double(), r.step_traj, r.num_trajectories)
    n = r.steps_per_trajectory
    bounds = torch.tensor(buckets[1:], dtype=n.dtype, device=n.device)
    bucket = torch.bucketize(n, bounds, right=True)  # trajectories below buckets[0] steps fall in none
    keep = n >= buckets[0]
    count = segments.segment_count(bucket[keep], len(buckets)).double()
    return torch.stack([count, segments.segment_sum(mass[keep], bucket[keep], len(buckets))], -1).cpu()


def length_skew_from(
    sums: Tensor, trajectories: int, buckets: tuple[int, ...] = DEFAULT_BUCKETS
) -> list[dict[str, Any]]:
    """``length_skew`` from ``length_skew_sums`` (of one batch, or summed over chunks) and the number of
    trajectories (a trajectory without steps carries no credit, so the buckets hold all of it)."""
    total_mass = float(sums[:, 1].sum())
    return [
        {
            "steps": name,
            "trajectories": int(sums[i, 0]),
            "trajectory_share": float(sums[i, 0]) / trajectories if trajectories else 0.0,
            "credit_share": float(sums[i, 1]) / total_mass if total_mass > 0 else 0.0,
        }
        for i, name in enumerate(_bucket_names(buckets))
    ]


def length_skew(rollouts: Rollouts, credit: Credit, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> list[dict[str, Any]]:
    """Share of the total |credit| (summed over steps) carried by trajectories in each step-count
    bucket, next to their share of trajectories — the "more turns, more weight" bias."""
    return length_skew_from(length_skew_sums(rollouts, credit, buckets), rollouts.num_trajectories, buckets)
