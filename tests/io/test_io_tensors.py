"""Trainer tensors (verl layout) → Rollouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stepcredit import RolloutError, StepKind
from stepcredit.io import from_trainer_tensors

OPEN, CLOSE = [7, 8], [9]


def test_steps_from_mask_runs_and_groups_from_uids():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    uids = np.array(["u-b", "u-a", "u-b"], dtype=object)
    r = from_trainer_tensors(mask, uids, outcome=torch.tensor([1.0, 0.0, 0.5]))
    assert r.step_offsets.tolist() == [0, 2, 3, 3]
    assert r.step_token_start.tolist() == [0, 4, 1]
    assert r.step_token_end.tolist() == [2, 5, 6]
    assert r.group.tolist() == [0, 1, 0]
    assert r.texts.group_names.to_pylist() == ["u-b", "u-a"]
    assert r.kind.tolist() == [StepKind.REASON, StepKind.ANSWER, StepKind.ANSWER]
    assert torch.equal(r.response_mask, mask.bool())


def test_outcome_from_token_level_rewards():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0]])
    r = from_trainer_tensors(mask, [0, 0], token_level_rewards=rewards)
    assert r.outcome.tolist() == [1.0, 0.5]


def test_tool_call_spans():
    #            0  1  2  3  4  5  6  7  8  9 10 11
    tokens = torch.tensor(
        [
            [5, 7, 8, 3, 9, 0, 0, 5, 7, 8, 9, 0],
            [7, 8, 1, 9, 7, 8, 9, 0, 0, 0, 0, 0],
        ]
    )
    mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        ]
    )
    r = from_trainer_tensors(
        mask, [0, 0], outcome=torch.zeros(2), responses=tokens, tool_call_start=OPEN, tool_call_end=CLOSE
    )
    assert r.call_offsets.tolist() == [0, 1, 2, 4]
    assert r.call_token_start.tolist() == [1, 8, 0, 4]
    assert r.call_token_end.tolist() == [5, 11, 4, 7]
    assert r.kind.tolist() == [StepKind.TOOL_CALL] * 3


@pytest.mark.parametrize(
    ("tokens", "mask", "fragment"),
    [
        ([[7, 8, 3, 3]], [[1, 1, 1, 1]], "never closed"),
        ([[7, 8, 3, 0, 9]], [[1, 1, 1, 0, 1]], "runs past the end of its step"),
        ([[3, 9, 3, 3]], [[1, 1, 1, 1]], "does not close exactly one call"),
        ([[7, 8, 7, 8, 9]], [[1, 1, 1, 1, 1]], "does not close exactly one call"),
    ],
)
def test_bad_tool_call_patterns(tokens, mask, fragment):
    with pytest.raises(RolloutError, match=fragment):
        from_trainer_tensors(
            torch.tensor(mask),
            [0],
            outcome=torch.zeros(1),
            responses=torch.tensor(tokens),
            tool_call_start=OPEN,
            tool_call_end=CLOSE,
            ids=["row-0"],
        )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(), "exactly one of outcome and token_level_rewards"),
        (dict(outcome=torch.zeros(2), token_level_rewards=torch.zeros(2, 3)), "exactly one"),
        (dict(token_level_rewards=torch.zeros(2, 4)), "expected shape"),
        (dict(outcome=torch.tensor([0.0, float("nan")])), "finite"),
        (dict(outcome=torch.zeros(2), tool_call_start=[1]), "both"),
        (dict(outcome=torch.zeros(2), tool_call_start=[1], tool_call_end=[2]), "need responses"),
    ],
)
def test_bad_trainer_inputs(kwargs, fragment):
    with pytest.raises(RolloutError, match=fragment):
        from_trainer_tensors(torch.ones(2, 3), [0, 1], **kwargs)


def test_bad_mask_and_index_shapes():
    with pytest.raises(RolloutError, match=r"expected shape \(N, T\)"):
        from_trainer_tensors(torch.ones(3), [0, 1, 2], outcome=torch.zeros(3))
    with pytest.raises(RolloutError, match="one per row"):
        from_trainer_tensors(torch.ones(2, 3), [0, 1, 2], outcome=torch.zeros(2))
