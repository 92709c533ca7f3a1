"""Gates: rubric (DRO), binary, zero-variance (DAPO), accuracy window (PRIME)."""

from __future__ import annotations

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.core import Texts
from stepcredit.estimators import grpo
from stepcredit.recipe import Recipe
from stepcredit.selection import accuracy_window, binary_gate, rubric_gate, zero_variance_filter


def groups(outcomes, rubric=None):
    group = [g for g, xs in enumerate(outcomes) for _ in xs]
    flat = [x for xs in outcomes for x in xs]
    n = len(flat)
    return Rollouts(
        group=group,
        outcome=flat,
        step_offsets=list(range(n + 1)),
        kind=[2] * n,
        rubric=rubric,
        texts=Texts.create(n, len(outcomes), n, 0, action=["ok"] * n),
    )


def test_binary_and_zero_variance_and_window():
    r = groups([[1.0, 0.0], [1.0, 1.0], [0.3, 0.3000001], [0.0], [0.5, 0.7, 1.0, 0.0, 0.0]])
    assert binary_gate(r).tolist() == [0, 1, 7, 8, 9, 10, 11]
    assert zero_variance_filter(r).tolist() == [0, 1, 7, 8, 9, 10, 11]  # group 2 differs by float noise only
    assert zero_variance_filter(r, tolerance=0.0).tolist() == [0, 1, 4, 5, 7, 8, 9, 10, 11]
    assert accuracy_window(r).tolist() == [0, 1, 7, 8, 9, 10, 11]  # rates .5 and .2
    assert accuracy_window(r, low=0.0, high=0.2).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="low"):
        accuracy_window(r, low=0.9, high=0.1)
    with pytest.raises(ValueError, match="tolerance"):
        zero_variance_filter(r, tolerance=-1)


def test_rubric_gate_drop_and_infeasible():
    verdicts = torch.tensor([[True, True], [True, False], [True, True], [False, True], [False, False]])
    r = groups([[1.0, 0.0, 0.0], [1.0, 0.0]], rubric=verdicts)
    assert rubric_gate(r).tolist() == [0, 2]  # group 1 has no valid rollout: removed
    keep, outcome = rubric_gate(r, mode="infeasible", infeasible_value=-1.0)
    assert keep.tolist() == [0, 1, 2] and outcome.tolist() == [1.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        rubric_gate(r, mode="soft")  # type: ignore[arg-type]


def test_rubric_gate_builtin_checks_and_recipe():
    texts = Texts.create(
        4,
        1,
        6,
        2,
        action=["call", "done", "call", "  ", "x", "final"],
        call_name=["f", "f"],
        call_arguments=["{}", "{}"],
    )
    r = Rollouts(
        group=[0, 0, 0, 0],
        outcome=[1.0, 0.0, 1.0, 0.0],
        step_offsets=[0, 2, 4, 5, 6],
        kind=[1, 2, 1, 2, 0, 2],
        call_offsets=[0, 1, 1, 2, 2, 2, 2],
        call_ok=[1, 0],
        texts=texts,
    )
    # t1 ends blank; t1's only call errored after no success; t2 ends with a REASON... kind 0 is not ANSWER
    assert rubric_gate(r, rubrics=["final_answer_nonempty"]).tolist() == [0, 3]
    assert rubric_gate(r, rubrics=["no_tool_error_after_last_success"]).tolist() == [0, 2, 3]
    assert rubric_gate(r, rubrics=["called_a_tool", "no_tool_errors"]).tolist() == [0]
    result = Recipe.from_dict(
        {"selection": [{"rubric_gate": {"rubrics": ["final_answer_nonempty"]}}], "credit": ["grpo"]}
    ).run(r)
    assert result.kept.tolist() == [0, 3]
    assert torch.equal(result.credit.trajectory, grpo(r.select([0, 3])).trajectory)  # among valid ones only
    with pytest.raises(ValueError, match="unknown rubric"):
        rubric_gate(r, rubrics=["be_nice"])
    with pytest.raises(ValueError, match="no rubric column"):
        rubric_gate(r)


def test_infeasible_gate_rescores_in_recipe():
    verdicts = torch.tensor([[True], [False], [True]])
    r = groups([[1.0, 1.0, 0.0]], rubric=verdicts)
    result = Recipe.from_dict(
        {"selection": [{"rubric_gate": {"mode": "infeasible", "infeasible_value": -1.0}}], "credit": ["grpo"]}
    ).run(r)
    assert result.rollouts.outcome.tolist() == [1.0, -1.0, 0.0]


def test_infeasible_rescore_keeps_token_columns_and_checks_the_new_outcome(monkeypatch):
    """The re-scored batch is built without re-comparing its (unchanged) token spans with the mask,
    and equals ``replace(selected, outcome=...)``; a non-finite re-score is still refused."""
    from dataclasses import replace

    from stepcredit import RolloutError

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    r = Rollouts(
        group=[0, 0, 1, 1], outcome=[1.0, 0.0, 1.0, 0.5], step_offsets=[0, 1, 2, 3, 4], kind=[2] * 4,
        rubric=torch.tensor([[True], [False], [False], [False]]), response_mask=mask,
        step_token_start=[0, 0, 1, 0], step_token_end=[2, 1, 3, 3],
    )
    recipe = Recipe.from_dict(
        {"selection": [{"rubric_gate": {"mode": "infeasible", "infeasible_value": -1.0}}], "credit": ["grpo"]}
    )
    from stepcredit.core import segments

    real = segments.span_coverage

    def no_cover_check(*args, **kwargs):
        raise AssertionError("the token spans were compared with the mask again")

    monkeypatch.setattr(segments, "span_coverage", no_cover_check)
    result = recipe.run(r)  # selection and re-scoring: no O(N·T) coverage check
    monkeypatch.setattr(segments, "span_coverage", real)
    keep, outcome = rubric_gate(r, mode="infeasible", infeasible_value=-1.0)
    assert result.rollouts.equals(replace(r.select(keep), outcome=outcome))
    assert result.rollouts.outcome.tolist() == [1.0, -1.0]
    with pytest.raises(RolloutError, match="finite"):
        r.replace(outcome=torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(RolloutError, match="one per trajectory"):
        r.replace(outcome=torch.zeros(3))
