"""Credit: components, views, token broadcast."""

from __future__ import annotations

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.credit import Credit


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
