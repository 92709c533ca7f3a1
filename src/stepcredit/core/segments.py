"""Group and segment reductions shared by every estimator.

Everything here works on flat tensors plus an index that says which segment (group, trajectory,
decision point) each row belongs to, or on CSR offsets. All functions are vectorized with
``index_add_`` / ``scatter_reduce_`` / cumulative sums: no Python loop over rows, steps or tokens.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["std", "mean", "none"]
CONSTANT_RTOL = 8 * torch.finfo(torch.float32).eps
"""Values of a group within this relative distance (8 float32 ulps, ≈ 9.5e-7) count as equal."""
Singleton = Literal["raw", "zero"]


def segment_ids(offsets: Tensor) -> Tensor:
    """Segment index of every element for CSR ``offsets`` ``[K+1]`` → ``[offsets[-1]]`` (int64)."""
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts)


def ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenation of ``arange(starts[k], starts[k] + counts[k])`` over ``k``, without a loop."""
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    seg = segment_ids(offsets)
    return starts[seg] + torch.arange(seg.numel(), device=starts.device) - offsets[seg]


def segment_count(index: Tensor, num_segments: int) -> Tensor:
    """Number of rows in each segment ``[num_segments]`` (int64)."""
    return torch.bincount(index, minlength=num_segments)[:num_segments]


def segment_sum(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Sum of ``values`` within each segment ``[num_segments]``; empty segments sum to 0."""
    out = torch.zeros(num_segments, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def segment_mean(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of ``values`` within each segment; empty segments get 0."""
    count = segment_count(index, num_segments).to(values.dtype)
    return segment_sum(values, index, num_segments) / count.clamp_min(1)


def segment_first(index: Tensor, num_segments: int, positions: Tensor | None = None) -> Tensor:
    """Per segment, the smallest of its rows' ``positions`` (default: the row numbers), i.e. where the
    segment first appears; ``len(index)`` for an empty segment."""
    pos = torch.arange(index.numel(), device=index.device) if positions is None else positions.to(torch.int64)
    out = torch.full((num_segments,), index.numel(), dtype=torch.int64, device=index.device)
    return out.scatter_reduce_(0, index, pos, reduce="amin")


def segment_last(index: Tensor, num_segments: int, positions: Tensor | None = None) -> Tensor:
    """Per segment, the largest of its rows' ``positions`` (default: the row numbers); −1 when empty."""
    pos = torch.arange(index.numel(), device=index.device) if positions is None else positions.to(torch.int64)
    out = torch.full((num_segments,), -1, dtype=torch.int64, device=index.device)
    return out.scatter_reduce_(0, index, pos, reduce="amax")


def occurrence_rank(index: Tensor, num_segments: int) -> Tensor:
    """Each row's rank among the rows of its segment, in row order: 0 for the segment's first row, 1
    for its second, … (``[3, 5, 3, 3] → [0, 0, 1, 2]``). ``index`` holds ids in ``[0, num_segments)``."""
    n = index.numel()
    order = torch.sort(index, stable=True).indices
    counts = segment_count(index, num_segments)
    starts = torch.cumsum(counts, 0) - counts
    out = torch.empty(n, dtype=torch.int64, device=index.device)
    out[order] = torch.arange(n, device=index.device) - starts[index[order]]
    return out


def pair_members(pair_ids: Tensor, num_pairs: int, *columns: Tensor) -> tuple[Tensor, ...]:
    """For ids from ``unique_pairs``: each pair's value of every column (rows of one pair agree)."""
    return tuple(
        torch.zeros(num_pairs, dtype=col.dtype, device=col.device).scatter_(0, pair_ids, col) for col in columns
    )


def segment_min_max(values: Tensor, index: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """Per-segment minimum and maximum (empty segments: +inf / -inf)."""
    lo = torch.full((num_segments,), float("inf"), dtype=values.dtype, device=values.device)
    hi = torch.full((num_segments,), float("-inf"), dtype=values.dtype, device=values.device)
    lo.scatter_reduce_(0, index, values, reduce="amin")
    hi.scatter_reduce_(0, index, values, reduce="amax")
    return lo, hi


def group_stats(
    values: Tensor,
    index: Tensor,
    num_segments: int,
    *,
    weights: Tensor | None = None,
    unbiased: bool = True,
    with_std: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-segment ``(count, mean, std, constant)`` with optional row multiplicities ``weights``.

    Statistics are computed in float64 whatever the input dtype (float32 outcomes of magnitude
    ≳ 2e19 would overflow a float32 variance) and returned in float64. A segment is ``constant`` when
    its positively weighted values differ by at most ``CONSTANT_RTOL`` relative to their magnitude:
    values equal in exact arithmetic but summed in another order differ by an ulp or two, and must not
    come out as ±0.06 after division by a zero std.

    With ``weights`` every row counts as if it were repeated ``weights[i]`` times (so statistics over
    steps can be taken from one row per trajectory, weighted by its step count). ``count`` is the
    total weight; ``std`` is Bessel-corrected when ``unbiased`` (0 when ``count <= 1``); ``constant``
    marks segments whose positively weighted values are all equal. ``with_std=False`` skips the
    second pass and returns zeros for ``std``.
    """
    values = values.double()
    if weights is None:
        count = segment_count(index, num_segments).to(values.dtype)
        total = segment_sum(values, index, num_segments)
    else:
        w = weights.to(values.dtype)
        count = segment_sum(w, index, num_segments)
        total = segment_sum(w * values, index, num_segments)
    mean = torch.where(count > 0, total / count.clamp_min(torch.finfo(values.dtype).tiny), torch.zeros_like(total))
    if with_std:
        dev = (values - mean[index]) ** 2
        sq = segment_sum(dev if weights is None else w * dev, index, num_segments)
        denom = (count - 1 if unbiased else count).clamp_min(1)
        std = torch.where(count > (1 if unbiased else 0), torch.sqrt(sq / denom), torch.zeros_like(sq))
    else:
        std = torch.zeros_like(mean)
    lo = torch.full((num_segments,), float("inf"), dtype=values.dtype, device=values.device)
    hi = torch.full((num_segments,), float("-inf"), dtype=values.dtype, device=values.device)
    if weights is None:
        lo.scatter_reduce_(0, index, values, reduce="amin")
        hi.scatter_reduce_(0, index, values, reduce="amax")
    else:  # only positively weighted rows take part
        live = weights > 0
        lo.scatter_reduce_(0, index[live], values[live], reduce="amin")
        hi.scatter_reduce_(0, index[live], values[live], reduce="amax")
    scale = torch.maximum(lo.abs(), hi.abs())
    return count, mean, std, (hi - lo) <= CONSTANT_RTOL * scale


def group_normalize(
    values: Tensor,
    index: Tensor,
    num_segments: int,
    *,
    norm: Norm = "std",
    eps: float = 1e-6,
    unbiased: bool = True,
    singleton: Singleton = "raw",
    weights: Tensor | None = None,
) -> Tensor:
    """Group-relative values: ``(x − mean_g) / (std_g + eps)`` (``norm="std"``), ``x − mean_g``
    (``norm="mean"``, Dr.GRPO) or ``x`` unchanged (``norm="none"``).

    * ``singleton="raw"`` (verl): a group with one member (total weight ≤ 1) uses mean 0 and std 1,
      so it keeps its raw value (divided by ``1 + eps`` under ``"std"``); ``"zero"`` gives it 0.
    * A group whose values are all equal — within ``CONSTANT_RTOL`` of their magnitude — gets exactly
      0 (not ``O(ulp / eps)`` rounding noise of the mean, which ``(x − mean) / (0 + eps)`` would
      otherwise amplify).
    * Statistics in float64 (see ``group_stats``); the result has the input's dtype.
    * ``weights``: row multiplicities for the statistics (see ``group_stats``).
    """
    if norm not in ("std", "mean", "none"):
        raise ValueError(f"norm must be 'std', 'mean' or 'none', got {norm!r}")
    if singleton not in ("raw", "zero"):
        raise ValueError(f"singleton must be 'raw' or 'zero', got {singleton!r}")
    if norm == "none":
        return values.clone()
    dtype, values = values.dtype, values.double()
    count, mean, std, constant = group_stats(
        values, index, num_segments, weights=weights, unbiased=unbiased, with_std=norm == "std"
    )
    single = count <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    centered = values - mean[index]
    if norm == "std":
        std = torch.where(single, torch.ones_like(std), std)
        centered = centered / (std[index] + eps)
    zero = (constant & ~single) | (single if singleton == "zero" else torch.zeros_like(single))
    return torch.where(zero[index], torch.zeros_like(centered), centered).to(dtype)


def whiten(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """Batch whitening as verl's ``masked_whiten`` over a broadcast ``(B, T)`` tensor: weighted mean μ
    and unbiased variance σ² (each with verl's ``+1e-8`` in the denominators), ``(x − μ) / sqrt(σ² + 1e-8)``.

    ``weights`` are row multiplicities (a trajectory's token count reproduces verl exactly); computed
    in float64 and returned in the input dtype.
    """
    x = values.double()
    w = torch.ones_like(x) if weights is None else weights.double()
    total = w.sum()
    mean = (w * x).sum() / (total + 1e-8)
    var = (w * (x - mean) ** 2).sum() / (total + 1e-8)
    if total > 1:
        var = var * total / (total - 1)
    return ((x - mean) * torch.rsqrt(var + 1e-8)).to(values.dtype)


def unique_pairs(a: Tensor, b: Tensor, *, a_size: int | None = None) -> tuple[Tensor, int]:
    """Dense ids of the distinct ``(a[i], b[i])`` pairs: ``(pair_id [n], num_pairs)`` (int64).

    ``a_size``: ``a`` already holds dense ids in ``[0, a_size)`` (saves one sort).
    """
    if a.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=a.device), 0
    # 1-D uniques: ``torch.unique(dim=0)`` on stacked pairs is ~30× slower on CPU
    if a_size is None:
        a_values, a_dense = torch.unique(a, return_inverse=True)
        a_size = a_values.numel()
    else:
        a_dense = a.to(torch.int64)
    b = b.to(torch.int64)
    lo, hi = int(b.min()), int(b.max())
    if lo >= 0 and (hi + 1) * a_size < 2**62:  # small keys (tree nodes, dense ids)
        combined = a_dense * (hi + 1) + b
        span = (hi + 1) * a_size
        if span <= max(4 * b.numel(), 1 << 20):  # dense enough to count instead of sort
            present = torch.zeros(span, dtype=torch.int64, device=b.device)
            present[combined] = 1
            rank = torch.cumsum(present, 0) - 1
            return rank[combined], int(rank[-1]) + 1
    else:  # arbitrary 64-bit keys (hashes): densify them first
        b_values, b_dense = torch.unique(b, return_inverse=True)
        combined = a_dense * b_values.numel() + b_dense
    _, inverse = torch.unique(combined, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def connected_components(a: Tensor, num_a: int, b: Tensor, num_b: int) -> tuple[Tensor, int]:
    """Dense ids of the connected components of rows linked by sharing an ``a`` id or a ``b`` id (both
    dense, in ``[0, num_a)`` / ``[0, num_b)``): ``(component [n], num_components)``. Minimum-label
    propagation, as many rounds as the longest chain of links."""
    n = a.numel()
    label = torch.arange(n, device=a.device)
    while True:
        low_a = torch.full((num_a,), n, device=a.device).scatter_reduce(0, a, label, "amin")
        low_b = torch.full((num_b,), n, device=a.device).scatter_reduce(0, b, label, "amin")
        new = torch.minimum(low_a[a], low_b[b])
        if torch.equal(new, label):
            break
        label = new
    unique, dense = torch.unique(label, return_inverse=True)
    return dense, int(unique.numel())


def group_wins(success: Tensor, group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per group, how many of its rows succeeded and how many rows it has: ``(wins [G], size [G])``
    (int64) — a group is all-fail where ``wins == 0``, all-success where ``wins == size``, else mixed."""
    return segment_sum(success.to(torch.int64), group, num_groups), segment_count(group, num_groups)


def leave_one_out_mean(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Per row, the mean of the *other* members of its segment: ``(Σ_g x − x_i) / (n_g − 1)``.

    A row alone in its segment has no other member; its baseline is 0 (verl's RLOO convention).
    """
    count = segment_count(index, num_segments)[index]
    total = segment_sum(values, index, num_segments)[index]
    others = (count - 1).clamp_min(1).to(values.dtype)
    return torch.where(count > 1, (total - values) / others, torch.zeros_like(values))


def reverse_discounted_cumsum(rewards: Tensor, offsets: Tensor, gamma: float | Tensor) -> Tensor:
    """Returns within each segment: ``G_t = Σ_{k≥t} γ^{k−t} r_k`` (summing to the segment's end).

    ``offsets`` are CSR offsets ``[K+1]`` of the segments (e.g. ``Rollouts.step_offsets``). Computed as
    a log-depth doubling scan of ``G_t = r_t + γ G_{t+1}``, so the cost is ``O(S log L)`` with ``L`` the
    longest segment, and no power ``γ^k`` is ever formed (stable for any length and ``0 ≤ γ ≤ 1``).
    ``gamma`` may be a scalar or a per-row tensor (the discount applied from row t to row t+1).
    """
    n = rewards.numel()
    out = rewards.clone()
    if n == 0:
        return out
    seg = segment_ids(offsets)
    same_next = torch.zeros(n, dtype=torch.bool, device=rewards.device)
    same_next[:-1] = seg[1:] == seg[:-1]
    g = torch.as_tensor(gamma, dtype=rewards.dtype, device=rewards.device).expand(n)
    coef = torch.where(same_next, g, torch.zeros_like(out))  # G_t = out_t + coef_t * G_{t+d}
    d = 1
    while d < n and bool(coef.any()):
        ahead_out = F.pad(out[d:], (0, d))
        ahead_coef = F.pad(coef[d:], (0, d))
        out.addcmul_(coef, ahead_out)
        coef.mul_(ahead_coef)
        d *= 2
    return out


def span_index_map(starts: Tensor, ends: Tensor, rows: Tensor, shape: tuple[int, int]) -> Tensor:
    """A ``(B, T)`` int64 map holding, at every token, the index of the span covering it, else −1.

    Spans ``[starts[k], ends[k])`` of row ``rows[k]`` must not overlap (checked by the caller).
    """
    b, t = shape
    marks = torch.zeros(b, t + 1, dtype=torch.int64, device=starts.device)
    ids = torch.arange(1, starts.numel() + 1, dtype=torch.int64, device=starts.device)
    marks.index_put_((rows, starts), ids, accumulate=True)
    marks.index_put_((rows, ends), -ids, accumulate=True)
    return torch.cumsum(marks, dim=1)[:, :t] - 1


def span_coverage(starts: Tensor, ends: Tensor, rows: Tensor, shape: tuple[int, int]) -> Tensor:
    """A ``(B, T)`` bool map of the tokens covered by non-overlapping spans (int8 marks + cumsum: a
    quarter of the memory of ``span_index_map``)."""
    b, t = shape
    marks = torch.zeros(b, t + 1, dtype=torch.int8, device=starts.device)
    one = torch.ones(starts.numel(), dtype=torch.int8, device=starts.device)
    marks.index_put_((rows, starts), one, accumulate=True)
    marks.index_put_((rows, ends), -one, accumulate=True)
    return torch.cumsum(marks, dim=1, dtype=torch.int8)[:, :t] > 0


def broadcast_to_tokens(values: Tensor, index_map: Tensor) -> Tensor:
    """Per-span ``values [K]`` spread to a ``(B, T)`` tensor through ``index_map`` (−1 → exactly 0)."""
    if values.numel() == 0:
        return torch.zeros(index_map.shape, dtype=values.dtype, device=values.device)
    covered = index_map >= 0
    out = values[index_map.clamp_min(0)]
    return torch.where(covered, out, torch.zeros((), dtype=values.dtype, device=values.device))


_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def host_array(x: Tensor) -> np.ndarray | None:
    """``x`` as a numpy view, or ``None`` for what numpy cannot view (bfloat16, conjugate, sparse)."""
    try:
        return x.detach().numpy()
    except (TypeError, RuntimeError):
        return None


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` for a 2-D ``x`` and 1-D int64 row indices in ``[0, len(x))``."""
    return x[idx]


def rows_under_mask(values: Tensor, mask: Tensor) -> Tensor:
    """``torch.where(mask, values[:, None], 0)``: ``(B, T)`` with ``values[i]`` on row ``i``'s mask
    tokens and exactly 0 elsewhere."""
    return torch.where(mask, values[:, None], torch.zeros((), dtype=values.dtype, device=mask.device))


def spans_to_tokens(
    values: Tensor,
    rows: Tensor,
    starts: Tensor,
    ends: Tensor,
    shape: tuple[int, int],
    inner: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """A ``(B, T)`` tensor holding ``values[k]`` on the tokens ``[starts[k], ends[k])`` of row
    ``rows[k]``, and exactly 0 on tokens outside every span (spans must not overlap).

    ``inner = (inner_values, outer, inner_starts, inner_ends)``: spans nested inside span ``outer[j]``
    (in its row; they must not overlap each other) whose tokens hold ``inner_values[j]`` instead.

    Bit-exact and one ``(B, T)`` buffer: each span edge marks the difference of the bit patterns of the
    values on its two sides (an integer of the values' width, wrapping), and a running sum along each
    row turns the marks into the values' bit patterns — the same numbers as
    ``broadcast_to_tokens(values, span_index_map(...))`` without its two int64 ``(B, T)`` maps. Floating
    values of 2, 4 or 8 bytes;
    other dtypes go through ``span_index_map``.
    """
    b, t = shape
    bits_dtype = _SAME_WIDTH_INT.get(values.element_size()) if values.is_floating_point() else None
    if inner is not None:
        inner_values = inner[0].to(values.dtype)
    if bits_dtype is None:
        out = broadcast_to_tokens(values, span_index_map(starts, ends, rows, shape))
        if inner is not None:
            _, outer, inner_starts, inner_ends = inner
            nested = span_index_map(inner_starts, inner_ends, rows[outer], shape)
            out = torch.where(nested >= 0, inner_values[nested.clamp_min(0)], out)
        return out
    marks = torch.zeros(b * t, dtype=bits_dtype, device=values.device)
    if b * t == 0:
        return marks.view(values.dtype).view(b, t)
    bits = values.view(bits_dtype).to(torch.int64)
    edges = [(rows * t + starts, bits), (rows * t + ends, -bits, ends < t)]
    if inner is not None:
        _, outer, inner_starts, inner_ends = inner
        step = inner_values.view(bits_dtype).to(torch.int64) - bits[outer]
        base = rows[outer] * t
        edges += [(base + inner_starts, step), (base + inner_ends, -step, inner_ends < t)]
    for edge in edges:
        pos, delta = edge[0], edge[1]
        if len(edge) == 3:  # an edge at the row's end marks nothing
            pos, delta = pos[edge[2]], delta[edge[2]]
        marks.index_put_((pos,), delta.to(bits_dtype), accumulate=True)  # wraps: differences of bits
    return marks.view(b, t).cumsum_(1).view(values.dtype)
