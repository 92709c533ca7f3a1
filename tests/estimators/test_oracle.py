"""The oracle yardstick: label credit on labelled steps, the GRPO advantage on neutral ones."""

from __future__ import annotations

import pytest
import torch

from stepcredit import Recipe, Rollouts, grpo


def test_oracle_by_hand() -> None:
    r = Rollouts(
        group=[0, 0],
        outcome=[1.0, 0.0],
        step_offsets=[0, 2, 5],
        label=[1, 0, 1, -1, 0],
    )
    credit = Recipe.builtin("oracle").run(r).credit
    a = grpo(r).trajectory  # ±0.7071 for one success and one failure
    assert torch.allclose(credit.per_step(r), torch.tensor([1.0, a[0], 1.0, -1.0, a[1]]))


def test_oracle_refuses_unlabelled_rollouts() -> None:
    with pytest.raises(ValueError, match="needs step labels"):
        Recipe.builtin("oracle").run(Rollouts(group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 1, 2]))
