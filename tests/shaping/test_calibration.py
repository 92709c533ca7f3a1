"""RLCR's Brier reward and the calibration metrics: hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from stepcredit import Rollouts, estimators
from stepcredit.auditing import brier_score, confidence_auroc, expected_calibration_error
from stepcredit.core import Texts
from stepcredit.estimators import grpo
from stepcredit.recipe import Recipe
from stepcredit.shaping import brier, parse_confidence


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("<confidence>0.8</confidence>", 0.8),
        ("<confidence>0.2</confidence> then <confidence> 0.9 </confidence>", 0.9),  # the last tag
        ("<confidence>high</confidence>", math.nan),
        ("no tag", math.nan),
        ("<confidence>1.5</confidence>", 1.5),  # parsed; the range is checked by the reward
        ("<confidence>nan</confidence>", math.nan),
    ],
)
def test_parse_confidence(text, want):
    got = parse_confidence(text)
    assert (math.isnan(got) and math.isnan(want)) or got == want


def batch(actions, outcome, confidence=None):
    n = len(actions)
    return Rollouts(
        group=[0] * n,
        outcome=outcome,
        step_offsets=list(range(n + 1)),
        kind=[2] * n,
        confidence=confidence,
        texts=Texts.create(n, 1, n, 0, action=actions),
    )


ACTIONS = [
    "answer A <confidence>0.8</confidence>",  # correct, q .8
    "answer B <confidence>0.8</confidence>",  # wrong, q .8
    "answer C <confidence>0.1</confidence>",  # wrong, q .1
    "answer D",  # correct, no confidence
    "answer E <confidence>1.7</confidence>",  # correct, out of range
]
OUTCOME = [1.0, 0.0, 0.0, 1.0, 1.0]


def test_paper_variant_by_hand():
    r = brier(batch(ACTIONS, OUTCOME))
    want = [1 - 0.2**2, 0 - 0.8**2, 0 - 0.1**2, 1 - 1, 1 - 1]
    assert r.outcome.tolist() == pytest.approx(want, abs=1e-6)


def test_released_variant_by_hand():
    r = brier(batch(ACTIONS, OUTCOME), variant="released")
    want = [0.5 * (1 + 1 + 1 - 0.2**2), 0.5 * (1 + 0 + 1 - 0.8**2), 0.5 * (1 + 0 + 1 - 0.1**2), 0.0, 0.0]
    assert r.outcome.tolist() == pytest.approx(want, abs=1e-6)


def test_column_source_and_threshold():
    r = batch(["a", "b"], [0.9, 0.2], confidence=[0.5, float("nan")])
    got = brier(r, source="column", success_threshold=0.5).outcome.tolist()
    assert got == pytest.approx([1 - 0.25, 0 - 1], abs=1e-6)
    with pytest.raises(ValueError, match="confidence column"):
        brier(batch(["a"], [1.0]), source="column")
    with pytest.raises(ValueError, match="variant"):
        brier(batch(["a"], [1.0]), variant="other")  # type: ignore[arg-type]


def test_brier_component_is_mean_normalised_reward_and_composes():
    r = batch(ACTIONS, OUTCOME)
    reward = brier(r).outcome
    assert torch.allclose(estimators.brier(r).trajectory, reward - reward.mean())
    recipe = Recipe.from_dict({"credit": ["grpo", {"brier": {"weight": 0.5}}]})
    got = recipe.run(r).credit.trajectory
    assert torch.allclose(got, grpo(r).trajectory + 0.5 * (reward - reward.mean()))


def test_calibration_metrics_by_hand():
    q = torch.tensor([0.9, 0.8, 0.3, 0.2, float("nan")], dtype=torch.float64)  # (float32 0.9 is 0.8999…)
    c = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    assert brier_score(q, c) == pytest.approx((0.01 + 0.64 + 0.49 + 0.04) / 4)
    # bins: 0.9 → 9, 0.8 → 8, 0.3 → 3, 0.2 → 2; each alone: |acc − conf| = .1, .8, .7, .2
    assert expected_calibration_error(q, c) == pytest.approx((0.1 + 0.8 + 0.7 + 0.2) / 4)
    # positives {0.9, 0.3} vs negatives {0.8, 0.2}: pairs won 0.9>0.8, 0.9>0.2, 0.3>0.2 → 3/4
    assert confidence_auroc(q, c) == pytest.approx(0.75)
    assert math.isnan(brier_score(torch.tensor([float("nan")]), torch.tensor([1.0])))
