"""Credit: components, views, token broadcast."""

from __future__ import annotations

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.core.credit import Credit


def token_rollouts():
    # trajectory 0: steps [0,3) and [5,7); a call at [1,3) in step 0. trajectory 1: one step [0,2)
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    return Rollouts(
        group=[0, 0],
        outcome=[1.0, 0.0],
        step_offsets=[0, 2, 3],
        kind=[1, 2, 2],
        call_offsets=[0, 1, 1, 1],
        call_ok=[1],
        response_mask=mask,
        step_token_start=[0, 5, 0],
        step_token_end=[3, 7, 2],
        call_token_start=[1],
        call_token_end=[3],
    )


def test_to_tokens_combines_components_and_zeroes_masked_tokens():
    r = token_rollouts()
    c = Credit(torch.tensor([1.0, -1.0]), step=torch.tensor([0.5, -0.25, 2.0]), call=torch.tensor([10.0]))
    want = torch.tensor(
        [[1.5, 11.5, 11.5, 0, 0, 0.75, 0.75, 0], [1.0, 1.0, 0, 0, 0, 0, 0, 0]],
    )
    assert torch.equal(c.to_tokens(r), want)
    assert c.per_step(r).tolist() == [1.5, 0.75, 1.0]
    assert c.per_call(r).tolist() == [11.5]


def test_trajectory_only_fast_path():
    r = token_rollouts()
    out = Credit(torch.tensor([2.0, -3.0])).to_tokens(r)
    assert torch.equal(out, torch.where(r.response_mask, torch.tensor([[2.0], [-3.0]]), torch.tensor(0.0)))
    assert not torch.signbit(out[~r.response_mask]).any()  # exactly +0, not -0


def test_sum_scale_select_summary():
    r = token_rollouts()
    a = Credit(torch.tensor([1.0, -1.0]))
    b = Credit(torch.zeros(2), step=torch.tensor([1.0, 2.0, 3.0]))
    s = (a + b).scale(2.0)
    assert s.per_step(r).tolist() == [4.0, 6.0, 4.0]
    sel = s.select(r, torch.tensor([1]))
    assert sel.trajectory.tolist() == [-2.0] and sel.step.tolist() == [6.0]
    summ = s.summary(r)
    assert summ["mean"].tolist() == [5.0, 4.0]
    assert summ["min"].tolist() == [4.0, 4.0] and summ["max"].tolist() == [6.0, 4.0]
    assert summ["positive_share"].tolist() == [1.0, 1.0]


def test_check_and_errors():
    r = token_rollouts()
    with pytest.raises(ValueError, match="shape"):
        Credit(torch.zeros(3)).check(r)
    with pytest.raises(ValueError, match="not finite"):
        Credit(torch.tensor([0.0, float("nan")])).check(r)
    no_tokens = Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1])
    with pytest.raises(ValueError, match="token columns"):
        Credit(torch.zeros(1)).to_tokens(no_tokens)
    no_call_spans = Rollouts(
        group=[0],
        outcome=[1.0],
        step_offsets=[0, 1],
        kind=[1],
        call_offsets=[0, 1],
        call_ok=[1],
        response_mask=torch.ones(1, 2, dtype=torch.bool),
        step_token_start=[0],
        step_token_end=[2],
    )
    with pytest.raises(ValueError, match="call token spans"):
        Credit(torch.zeros(1), call=torch.ones(1)).to_tokens(no_call_spans)


def test_summary_of_trajectory_without_steps():
    r = Rollouts(group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 0, 2])
    summ = Credit(torch.tensor([1.0, 2.0])).summary(r)
    assert summ["min"].tolist() == [0.0, 2.0] and summ["mean"].tolist() == [0.0, 2.0]


# ------------------------------------------------------------------ the span broadcast and embed
def _reference_tokens(c: Credit, r: Rollouts) -> torch.Tensor:
    """``to_tokens`` as two int64 index maps (the implementation before ``spans_to_tokens``)."""
    from stepcredit.core import segments

    assert r.response_mask is not None
    if c.step is None and c.call is None:
        return torch.where(r.response_mask, c.trajectory[:, None], torch.zeros((), dtype=c.trajectory.dtype))
    out = segments.broadcast_to_tokens(c.per_step(r), r.token_step_index)
    if c.call is not None:
        shape = (r.response_mask.shape[0], r.response_mask.shape[1])
        call_map = segments.span_index_map(r.call_token_start, r.call_token_end, r.call_traj, shape)
        out = out + segments.broadcast_to_tokens(c.call, call_map)
    return out


def _random_token_rollouts(seed: int) -> Rollouts:
    """Rows of runs of ones (steps), some holding one or two calls; adjacent steps, calls at a
    step's start or end, rows without steps, a step reaching the row's end."""
    g = torch.Generator().manual_seed(seed)
    n, t = 7, 24
    mask = torch.zeros(n, t, dtype=torch.bool)
    starts, ends, rows, calls_per_step, cs, ce = [], [], [], [], [], []
    for i in range(n):
        pos = int(torch.randint(0, 3, (1,), generator=g))
        while i % 4 != 3 and pos < t:
            end = min(t, pos + int(torch.randint(1, 8, (1,), generator=g)))
            rows.append(i)
            starts.append(pos)
            ends.append(end)
            mask[i, pos:end] = True
            k = min(int(torch.randint(0, 3, (1,), generator=g)), (end - pos + 1) // 2)
            cuts = sorted(torch.randperm(end - pos + 1, generator=g)[: 2 * k].tolist())
            calls_per_step.append(len(cuts) // 2)
            for a, b in zip(cuts[0::2], cuts[1::2], strict=True):
                cs.append(pos + a)
                ce.append(pos + max(b, a + 1))
            pos = end + int(torch.randint(0, 3, (1,), generator=g))
    step_offsets = torch.cumsum(torch.bincount(torch.tensor(rows, dtype=torch.int64), minlength=n), 0)
    counts = torch.tensor(calls_per_step, dtype=torch.int64)
    return Rollouts(
        group=[i // 2 for i in range(n)],
        outcome=torch.rand(n, generator=g),
        step_offsets=torch.cat([torch.zeros(1, dtype=torch.int64), step_offsets]),
        kind=(counts > 0).to(torch.int8),
        call_offsets=torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]),
        response_mask=mask,
        step_token_start=starts,
        step_token_end=ends,
        call_token_start=cs,
        call_token_end=ce,
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_tokens_equals_index_map_broadcast_bit_for_bit(seed, dtype):
    r = _random_token_rollouts(seed)
    g = torch.Generator().manual_seed(100 + seed)
    n, s, c = r.num_trajectories, r.num_steps, r.num_calls
    assert c > 0
    # magnitudes far apart and both signs: bit differences of the values wrap around the integer range
    big = 10.0 ** torch.randint(-30, 30, (s,), generator=g).to(torch.float64)
    step = (torch.randn(s, generator=g, dtype=torch.float64) * big).to(dtype)
    step[::4] = -0.0
    traj = torch.randn(n, generator=g).to(dtype)
    call = (-torch.rand(c, generator=g, dtype=torch.float64) * 1e20).to(torch.float32)
    for credit in (
        Credit(traj),
        Credit(traj, step=step),
        Credit(torch.zeros(n, dtype=dtype), step=step),
        Credit(traj, call=call),
        Credit(traj, step=step, call=call),
        Credit(-traj.abs(), step=torch.full((s,), -0.0, dtype=dtype), call=torch.zeros(c)),
    ):
        got, want = credit.to_tokens(r), _reference_tokens(credit, r)
        assert got.dtype == want.dtype and torch.equal(got, want)
        assert torch.equal(torch.signbit(got), torch.signbit(want))  # -0.0 where the reference has it
        assert not torch.signbit(got[~r.response_mask]).any()


def test_spans_to_tokens_other_widths_and_fallback():
    from stepcredit.core import segments

    rows, starts, ends = torch.tensor([0, 0, 1]), torch.tensor([0, 3, 1]), torch.tensor([2, 5, 5])
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int32):
        values = torch.tensor([1.5, -2.0, 3.25]).to(dtype)
        a, b, c = values.tolist()
        want = torch.tensor([[a, a, 0, b, b], [0, c, c, c, c]]).to(dtype)  # by hand
        got = segments.spans_to_tokens(values, rows, starts, ends, (2, 5))
        assert got.dtype == dtype and torch.equal(got, want)
        inner = (torch.tensor([9.0]).to(dtype), torch.tensor([2]), torch.tensor([2]), torch.tensor([4]))
        nested = segments.spans_to_tokens(values, rows, starts, ends, (2, 5), inner=inner)
        want[1, 2:4] = 9
        assert torch.equal(nested, want)
    empty = segments.spans_to_tokens(torch.zeros(0), rows[:0], starts[:0], ends[:0], (3, 0))
    assert empty.shape == (3, 0)


def test_to_tokens_without_call_spans_still_refuses_call_credit():
    r = token_rollouts()
    no_calls = Rollouts(
        group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 2, 3], kind=[0, 2, 2],
        response_mask=r.response_mask, step_token_start=[0, 5, 0], step_token_end=[3, 7, 2],
    )
    with pytest.raises(ValueError, match="tool-call token spans"):
        Credit(torch.zeros(2), call=torch.zeros(0)).to_tokens(no_calls)


@pytest.mark.parametrize("seed", range(4))
def test_embed_puts_selected_credit_back_and_zeroes_the_rest(seed):
    r = _random_token_rollouts(seed)
    g = torch.Generator().manual_seed(seed)
    kept = torch.sort(torch.randperm(r.num_trajectories, generator=g)[:4]).values
    sub = r.select(kept)
    credit = Credit(torch.randn(4, generator=g), step=torch.randn(sub.num_steps, generator=g),
                    call=torch.randn(sub.num_calls, generator=g))
    full = credit.embed(r, kept)
    assert full.select(r, kept).trajectory.tolist() == credit.trajectory.tolist()
    tokens = full.to_tokens(r)
    want = torch.zeros_like(tokens)
    want[kept] = credit.to_tokens(sub)  # what the verl integration did: broadcast, then scatter rows
    assert torch.equal(tokens, want)
    outcome_only = Credit(credit.trajectory)
    assert torch.equal(outcome_only.embed(r, kept).to_tokens(r)[kept], outcome_only.to_tokens(sub))
    with pytest.raises(ValueError, match="kept trajectories"):
        credit.embed(r, kept[:2])
