"""Segment ops against naive Python loops on hypothesis-generated ragged batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit.core import segments

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@st.composite
def grouped(draw, max_groups: int = 8, max_rows: int = 40):
    """Values with a segment index; some segments empty, some singletons, values up to 1e6."""
    k = draw(st.integers(1, max_groups))
    n = draw(st.integers(0, max_rows))
    index = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(finite, st.sampled_from([0.0, 1.0, 0.5])), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64), torch.tensor(index, dtype=torch.int64), k


def members(values, index, k):
    out = [[] for _ in range(k)]
    for v, i in zip(values.tolist(), index.tolist(), strict=True):
        out[i].append(v)
    return out


@settings(max_examples=200, deadline=None)
@given(grouped())
def test_count_sum_mean_std_match_loops(batch):
    values, index, k = batch
    groups = members(values, index, k)
    count = segments.segment_count(index, k)
    total = segments.segment_sum(values, index, k)
    mean = segments.segment_mean(values, index, k)
    std = segments.group_stats(values, index, k)[2]
    pop = segments.group_stats(values, index, k, unbiased=False)[2]
    for g, xs in enumerate(groups):
        assert count[g] == len(xs)
        assert total[g].item() == pytest.approx(math.fsum(xs), rel=1e-9, abs=1e-6)
        m = math.fsum(xs) / len(xs) if xs else 0.0
        assert mean[g].item() == pytest.approx(m, rel=1e-9, abs=1e-6)
        ss = math.fsum((x - m) ** 2 for x in xs)
        assert std[g].item() == pytest.approx(math.sqrt(ss / (len(xs) - 1)) if len(xs) > 1 else 0.0, rel=1e-6, abs=1e-4)
        assert pop[g].item() == pytest.approx(math.sqrt(ss / len(xs)) if xs else 0.0, rel=1e-6, abs=1e-4)


def naive_normalize(values, index, k, norm, eps, singleton):
    groups = members(values, index, k)
    out = []
    for v, g in zip(values.tolist(), index.tolist(), strict=True):
        xs = groups[g]
        if len(xs) == 1:
            out.append(0.0 if singleton == "zero" else (v / (1 + eps) if norm == "std" else v))
            continue
        if min(xs) == max(xs):
            out.append(0.0)
            continue
        m = math.fsum(xs) / len(xs)
        if norm == "mean":
            out.append(v - m)
        else:
            s = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))
            out.append((v - m) / (s + eps))
    return out


@settings(max_examples=200, deadline=None)
@given(grouped(), st.sampled_from(["std", "mean"]), st.sampled_from(["raw", "zero"]))
def test_group_normalize_matches_loop(batch, norm, singleton):
    values, index, k = batch
    got = segments.group_normalize(values, index, k, norm=norm, singleton=singleton)
    want = naive_normalize(values, index, k, norm, 1e-6, singleton)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), np.array(want), rtol=1e-6, atol=1e-6)


def test_group_normalize_none_and_bad_args():
    x = torch.tensor([1.0, 2.0])
    i = torch.tensor([0, 0])
    assert torch.equal(segments.group_normalize(x, i, 1, norm="none"), x)
    with pytest.raises(ValueError, match="norm"):
        segments.group_normalize(x, i, 1, norm="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="singleton"):
        segments.group_normalize(x, i, 1, singleton="nan")  # type: ignore[arg-type]


def test_constant_group_is_exactly_zero_even_when_mean_rounds():
    # 0.1 is not representable: sum/3 differs from 0.1 by an ulp, which /eps would blow up
    x = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float32)
    out = segments.group_normalize(x, torch.zeros(3, dtype=torch.long), 1)
    assert torch.equal(out, torch.zeros(3))


@settings(max_examples=200, deadline=None)
@given(grouped())
def test_leave_one_out_mean_matches_loop(batch):
    values, index, k = batch
    groups = members(values, index, k)
    got = segments.leave_one_out_mean(values, index, k)
    for j, (v, g) in enumerate(zip(values.tolist(), index.tolist(), strict=True)):
        xs = groups[g]
        want = (math.fsum(xs) - v) / (len(xs) - 1) if len(xs) > 1 else 0.0
        assert got[j].item() == pytest.approx(want, rel=1e-6, abs=1e-3)


@st.composite
def ragged(draw):
    lengths = draw(st.lists(st.integers(0, 12), min_size=0, max_size=10))
    s = sum(lengths)
    rewards = draw(st.lists(finite, min_size=s, max_size=s))
    return torch.tensor(rewards, dtype=torch.float64), lengths


@settings(max_examples=200, deadline=None)
@given(ragged(), st.sampled_from([0.0, 0.5, 0.95, 1.0]))
def test_reverse_discounted_cumsum_matches_loop(batch, gamma):
    rewards, lengths = batch
    offsets = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int64)
    got = segments.reverse_discounted_cumsum(rewards, offsets, gamma)
    want, start = [], 0
    for n in lengths:
        seg = rewards[start : start + n].tolist()
        g, out = 0.0, []
        for r in reversed(seg):
            g = r + gamma * g
            out.append(g)
        want.extend(reversed(out))
        start += n
    np.testing.assert_allclose(got.numpy(), np.array(want), rtol=1e-9, atol=1e-3)


def test_reverse_discounted_cumsum_long_segment_is_stable():
    rewards = torch.zeros(5000, dtype=torch.float64)
    rewards[-1] = 1.0
    out = segments.reverse_discounted_cumsum(rewards, torch.tensor([0, 5000]), 0.9)
    assert out[-1] == 1.0
    assert out[-2] == pytest.approx(0.9)
    assert torch.isfinite(out).all() and out[0] >= 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=8), st.integers(0, 4))
def test_ranges_and_segment_ids(counts, pad):
    counts_t = torch.tensor(counts, dtype=torch.int64)
    starts = torch.tensor([pad + 10 * i for i in range(len(counts))], dtype=torch.int64)
    got = segments.ranges(starts, counts_t).tolist()
    assert got == [s + j for s, c in zip(starts.tolist(), counts, strict=True) for j in range(c)]
    offsets = torch.tensor([0, *np.cumsum(counts).tolist()], dtype=torch.int64)
    assert segments.segment_ids(offsets).tolist() == [k for k, c in enumerate(counts) for _ in range(c)]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_span_broadcast_matches_loop(data):
    b = data.draw(st.integers(1, 5))
    t = data.draw(st.integers(1, 20))
    rows, starts, ends = [], [], []
    for row in range(b):
        cuts = sorted(set(data.draw(st.lists(st.integers(0, t), max_size=8))))
        for a, z in zip(cuts[::2], cuts[1::2], strict=False):
            if z > a:
                rows.append(row)
                starts.append(a)
                ends.append(z)
    values = torch.tensor(data.draw(st.lists(finite, min_size=len(rows), max_size=len(rows))), dtype=torch.float32)
    index_map = segments.span_index_map(
        torch.tensor(starts, dtype=torch.int64),
        torch.tensor(ends, dtype=torch.int64),
        torch.tensor(rows, dtype=torch.int64),
        (b, t),
    )
    out = segments.broadcast_to_tokens(values, index_map)
    want = torch.zeros(b, t)
    want_index = torch.full((b, t), -1, dtype=torch.int64)
    for k, (r, a, z) in enumerate(zip(rows, starts, ends, strict=True)):
        want[r, a:z] = values[k]
        want_index[r, a:z] = k
    assert torch.equal(out, want)
    assert torch.equal(index_map, want_index)
    covered = segments.span_coverage(
        torch.tensor(starts, dtype=torch.int64),
        torch.tensor(ends, dtype=torch.int64),
        torch.tensor(rows, dtype=torch.int64),
        (b, t),
    )
    assert torch.equal(covered, want_index >= 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-(2**62), 2**62) | st.integers(0, 3)), max_size=30))
def test_unique_pairs_matches_dict(pairs):
    a = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    ids, count = segments.unique_pairs(a, b)
    seen = {}
    for p, i in zip(pairs, ids.tolist(), strict=True):
        assert seen.setdefault(p, i) == i  # equal pairs share an id
    assert len(set(seen.values())) == len(seen) == count  # distinct pairs get distinct ids


@settings(max_examples=150, deadline=None)
@given(grouped(), st.data())
def test_weighted_group_stats_equal_repeated_rows(batch, data):
    values, index, k = batch
    weights = torch.tensor(
        data.draw(st.lists(st.integers(0, 3), min_size=len(values), max_size=len(values))), dtype=torch.int64
    )
    count, mean, std, constant = segments.group_stats(values, index, k, weights=weights)
    rep_values = torch.repeat_interleave(values, weights)
    rep_index = torch.repeat_interleave(index, weights)
    c2, m2, s2, k2 = segments.group_stats(rep_values, rep_index, k)
    assert torch.equal(count, c2) and torch.equal(constant, k2)
    assert torch.allclose(mean, m2, rtol=1e-9, atol=1e-6) and torch.allclose(std, s2, rtol=1e-6, atol=1e-4)
    got = segments.group_normalize(values, index, k, weights=weights)
    rows = weights > 0
    want = segments.group_normalize(rep_values, rep_index, k)
    first = torch.cumsum(weights, 0) - weights  # position of each kept row's first copy
    assert torch.allclose(got[rows], want[first[rows]], rtol=1e-6, atol=1e-4)


def test_whiten_matches_verl_masked_whiten_formula():
    x = torch.tensor([1.0, -0.5, 2.0])
    w = torch.tensor([3, 1, 2])
    tokens = torch.repeat_interleave(x, w).double()
    n = tokens.numel()
    mean = tokens.sum() / (n + 1e-8)
    var = ((tokens - mean) ** 2).sum() / (n + 1e-8) * n / (n - 1)
    want = ((x.double() - mean) * torch.rsqrt(var + 1e-8)).float()
    assert torch.allclose(segments.whiten(x, w), want)


@settings(max_examples=100, deadline=None)
@given(grouped())
def test_segment_first_last_and_pair_members(batch):
    values, index, k = batch
    first, last = segments.segment_first(index, k), segments.segment_last(index, k)
    for g in range(k):
        rows = [i for i, x in enumerate(index.tolist()) if x == g]
        assert first[g] == (rows[0] if rows else len(index))
        assert last[g] == (rows[-1] if rows else -1)
    odd = torch.arange(len(index)) % 2 == 1
    assert torch.equal(
        segments.segment_last(index[odd], k, positions=torch.nonzero(odd).squeeze(1)),
        torch.tensor([max([i for i in range(len(index)) if index[i] == g and i % 2] or [-1]) for g in range(k)]),
    )
    b = (values * 2).round().long()
    ids, n = segments.unique_pairs(index, b)
    pa, pb = segments.pair_members(ids, n, index, b)
    assert torch.equal(pa[ids], index) and torch.equal(pb[ids], b)


@settings(max_examples=100, deadline=None)
@given(grouped())
def test_occurrence_rank(batch):
    _, index, k = batch
    rows = index.tolist()
    want = [rows[:i].count(x) for i, x in enumerate(rows)]
    assert segments.occurrence_rank(index, k).tolist() == want


def test_occurrence_rank_by_hand() -> None:
    assert segments.occurrence_rank(torch.tensor([3, 5, 3, 3, 0]), 6).tolist() == [0, 0, 1, 2, 0]
    assert segments.occurrence_rank(torch.zeros(0, dtype=torch.int64), 0).tolist() == []


def test_connected_components_by_hand() -> None:
    # rows 0-1 share a, 1-2 share b, 2-3 share a: one chain; row 4 alone; rows 5-6 share b
    a = torch.tensor([0, 0, 1, 1, 2, 3, 4])
    b = torch.tensor([0, 1, 1, 2, 3, 4, 4])
    comp, n = segments.connected_components(a, 5, b, 5)
    assert n == 3 and comp.tolist() == [0, 0, 0, 0, 1, 2, 2]
    comp, n = segments.connected_components(torch.zeros(0, dtype=torch.int64), 0, torch.zeros(0, dtype=torch.int64), 0)
    assert n == 0 and comp.numel() == 0


def test_group_wins() -> None:
    wins, size = segments.group_wins(torch.tensor([True, False, False, True, True]), torch.tensor([0, 0, 1, 2, 2]), 4)
    assert wins.tolist() == [1, 0, 2, 0] and size.tolist() == [2, 1, 2, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("shape", [(37, 53), (6, 1), (6, 2), (64, 7), (7, 257), (300, 3)])
def test_rows_under_mask_is_torch_where_bit_for_bit(dtype, shape):
    g = torch.Generator().manual_seed(7)
    n, t = shape
    mask = torch.rand(n, t, generator=g) < 0.6
    mask[0] = False
    mask[1] = True
    raw = torch.randn(n, generator=g) * 1e3
    raw[:6] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 0.0, -1.0])
    values = raw.to(dtype) if dtype.is_floating_point else raw.nan_to_num(0, 0, 0).to(dtype)
    # the reference in float64 (every value here is exact there), cast back: not the code path under test
    want = torch.where(mask, values.double()[:, None], torch.zeros((), dtype=torch.float64)).to(dtype)
    got = segments.rows_under_mask(values, mask)
    assert got.dtype == dtype and got.shape == mask.shape
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))  # bits: NaN, -0.0 included
    strided = torch.randn(2 * n, generator=g)[::2]  # a non-contiguous column of values
    assert torch.equal(segments.rows_under_mask(strided, mask), torch.where(mask, strided[:, None], 0.0))


def test_rows_under_mask_edge_cases():
    for shape in [(0, 5), (4, 0), (0, 0)]:
        got = segments.rows_under_mask(torch.ones(shape[0]), torch.ones(shape, dtype=torch.bool))
        assert got.shape == shape and got.dtype == torch.float32
    values = torch.tensor([1.5, -2.0], requires_grad=True)  # torch.where keeps the graph
    mask = torch.tensor([[True, False], [False, True]])
    out = segments.rows_under_mask(values, mask)
    out.sum().backward()
    assert torch.equal(values.grad, torch.tensor([1.0, 1.0]))
    assert torch.equal(out.detach(), torch.tensor([[1.5, 0.0], [0.0, -2.0]]))


def test_token_outputs_hold_no_bytes_of_earlier_results():
    """``rows_under_mask``, ``spans_to_tokens`` and ``gather_rows`` after a dropped all-NaN result of
    the same shape: exactly their own values (0 where the mask or the spans are not)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(30, 41, generator=g) < 0.5
    values = torch.randn(30, generator=g)
    kept = segments.rows_under_mask(values, mask)
    view = kept[2:5]
    del kept
    a = segments.rows_under_mask(torch.full((30,), float("nan")), torch.ones(30, 41, dtype=torch.bool))
    del a
    again = segments.rows_under_mask(values, mask)
    assert torch.equal(again, torch.where(mask, values[:, None], 0.0))  # no NaN left where the mask is 0
    assert torch.equal(view, torch.where(mask, values[:, None], 0.0)[2:5])
    del again
    rows, starts, ends = torch.tensor([0, 0, 7]), torch.tensor([1, 9, 0]), torch.tensor([4, 41, 41])
    step_values = torch.tensor([0.5, -1.0, 2.0])
    spans = segments.spans_to_tokens(step_values, rows, starts, ends, (30, 41))
    want = torch.zeros(30, 41)
    want[0, 1:4], want[0, 9:41], want[7, 0:41] = 0.5, -1.0, 2.0
    assert torch.equal(spans, want)
    x = torch.arange(30 * 41, dtype=torch.float32).reshape(30, 41)
    idx = torch.tensor([29, 0, 0, 5] * 4)
    del spans
    assert torch.equal(segments.gather_rows(x, idx), x[idx])
    assert torch.equal(segments.gather_rows(x, idx[:, None]), x[idx[:, None]])  # other shapes: indexing
