"""One clear line for bad input: errors that stay one bounded line, also from Python."""

from __future__ import annotations

import pytest

from stepcredit import Recipe, RecipeError, RolloutError, Rollouts
from stepcredit.core import Texts


def test_messages_stay_one_bounded_line():
    with pytest.raises(RecipeError) as info:
        Recipe.load({"name": "x" * 1200, "credit": ["nope"]})
    assert len(str(info.value)) <= 600
    err = RolloutError("a\nb " * 500, trajectory="t" * 5000, group="g\n" * 100, source="s" * 2000, field="f")
    assert "\n" not in str(err) and len(str(err)) < 1200
    assert err.trajectory == "t" * 5000  # the attributes keep the full values


def test_rollout_error_is_raised_for_unbounded_values_in_python_too():
    with pytest.raises(RolloutError):
        Rollouts(group=[0], outcome=[float("inf")], step_offsets=[0, 0], texts=Texts.create(1, 1, 0, 0))
