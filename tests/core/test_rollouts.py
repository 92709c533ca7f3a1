from __future__ import annotations

import pytest
import torch

from stepcredit import RolloutError, Rollouts, StepKind
from stepcredit.core import Texts
from tests.support.schema import columns_of


def small(**overrides):
    """3 trajectories in 2 groups with 2, 1 and 3 steps; step 0 and 3 make tool calls."""
    cols = dict(
        group=[0, 0, 1],
        outcome=[1.0, 0.0, 1.0],
        step_offsets=[0, 2, 3, 6],
        kind=[1, 2, 2, 1, 0, 2],
        call_offsets=[0, 1, 1, 1, 3, 3, 3],
        call_ok=[1, 1, 0],
        texts=Texts.create(3, 2, 6, 3, ids=["a", "b", "c"], group_names=["task-x", "task-y"]),
    )
    cols.update(overrides)
    return Rollouts(**cols)


def test_defaults_and_derived_indices():
    r = small()
    assert (r.num_trajectories, r.num_groups, r.num_steps, r.num_calls) == (3, 2, 6, 3)
    assert r.step_traj.tolist() == [0, 0, 1, 2, 2, 2]
    assert r.call_step.tolist() == [0, 3, 3]
    assert r.step_group.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.calls_per_trajectory.tolist() == [1, 0, 2]
    assert r.reward.tolist() == [0.0] * 6
    assert r.tool_ok.tolist() == [1, -1, -1, 0, -1, -1]  # from the calls; -1 without calls
    assert r.state.unique().numel() == 6  # default: no two steps share a decision point
    assert r.outcome.dtype == torch.float32 and r.kind.dtype == torch.int8
    assert "trajectories=3" in repr(r)


def test_select_reorders_and_renumbers_groups():
    r = small(label=[1, 0, -1, 0, 1, 0], call_label=[1, -1, 0])
    s = r.select([2, 0])
    assert s.texts.ids.to_pylist() == ["c", "a"]
    assert s.group.tolist() == [0, 1]
    assert s.texts.group_names.to_pylist() == ["task-y", "task-x"]
    assert s.step_offsets.tolist() == [0, 3, 5]
    assert s.kind.tolist() == [1, 0, 2, 1, 2]
    assert s.call_offsets.tolist() == [0, 2, 2, 2, 3, 3]
    assert s.call_ok.tolist() == [1, 0, 1]
    assert s.label.tolist() == [0, 1, 0, 1, 0]
    assert s.call_label.tolist() == [-1, 0, 1]
    assert s.select([]).num_trajectories == 0


def test_select_out_of_range():
    with pytest.raises(IndexError):
        small().select([3])


def test_to_device_keeps_values():
    r = small()
    moved = r.to("cpu")
    assert moved is not r and torch.equal(moved.outcome, r.outcome)


def test_immutable():
    r = small()
    with pytest.raises(AttributeError):
        r.outcome = torch.zeros(3)  # type: ignore[misc]


def token_batch(**overrides):
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    cols = dict(
        group=[0, 0],
        outcome=[1.0, 0.0],
        step_offsets=[0, 2, 3],
        response_mask=mask,
        step_token_start=[0, 3, 0],
        step_token_end=[2, 4, 3],
    )
    cols.update(overrides)
    return Rollouts(**cols)


def test_token_index_map():
    r = token_batch()
    assert r.token_step_index.tolist() == [[0, 0, -1, 1, -1], [2, 2, 2, -1, -1]]


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        (dict(outcome=[1.0, float("nan"), 0.0]), "outcome", "finite"),
        (dict(outcome=[1.0, float("inf"), 0.0]), "outcome", "finite"),
        (dict(group=[0, 0, 2]), "texts.group_names", "group names"),
        (dict(group=[0, -1, 1]), "group", ">= 0"),
        (dict(step_offsets=[0, 2, 1, 6]), "step_offsets", "decrease"),
        (dict(step_offsets=[1, 2, 3, 6]), "step_offsets", "start at 0"),
        (dict(step_offsets=[0, 2, 3]), "step_offsets", "offsets"),
        (dict(kind=[1, 2, 2, 1, 7, 2]), "kind", "expected one of"),
        (dict(kind=[0, 2, 2, 1, 0, 2]), "kind", "has tool calls"),
        (dict(reward=[0, 0, float("nan"), 0, 0, 0]), "reward", "finite"),
        (dict(tool_ok=[1, 0, 2, 0, 0, 0]), "tool_ok", "expected one of"),
        (dict(tool_ok=[0, 0, 0, 0, 0, 0]), "tool_ok", "disagrees with its calls"),
        (dict(call_ok=[1, 1]), "call_ok", "one per call"),
        (dict(label=[1, 0, 5, 0, 0, 0]), "label", "expected one of"),
        (dict(state=[1, 2, 3]), "state", "one per step"),
        (dict(outcome=[1.0, 0.5]), "outcome", "equal length"),
        (dict(texts=Texts.create(3, 2, 6, 3, ids=["a", "a", "c"])), "id", "not unique"),
        (dict(kind=[[1, 2], [2, 1]]), "kind", "one per step"),
        (dict(step_offsets=["a", "b", "c", "d"]), "step_offsets", ""),
    ],
)
def test_validation_errors_name_field(overrides, field, fragment):
    with pytest.raises(RolloutError) as info:
        small(**overrides)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_error_names_trajectory_and_group():
    with pytest.raises(RolloutError) as info:
        small(outcome=[1.0, 0.0, float("nan")])
    assert info.value.trajectory == "c" and info.value.group == "task-y"
    assert "trajectory 'c' (group 'task-y')" in str(info.value)


def test_empty_group_is_rejected():
    with pytest.raises(RolloutError, match="dense"):
        Rollouts(group=[0, 2], outcome=[0, 1], step_offsets=[0, 0, 0], texts=Texts.create(2, 3, 0, 0))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (dict(response_mask=torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])), "outside every step span"),
        (dict(response_mask=torch.tensor([[1, 0, 0, 1, 0], [1, 1, 1, 0, 0]])), "inside a step span"),
        (dict(step_token_start=[0, 1, 0]), "before the previous step ends"),
        (dict(step_token_end=[2, 9, 3]), "outside"),
        (dict(step_token_end=None), "come together"),
        (dict(response_mask=torch.ones(3, 5)), "expected shape"),
        (dict(call_offsets=[0, 1, 1, 1], kind=[1, 0, 0], call_token_start=[3], call_token_end=[4]), "outside its step"),
    ],
)
def test_token_validation(overrides, fragment):
    with pytest.raises(RolloutError, match=fragment):
        token_batch(**overrides)


def test_tool_call_kind_enum_roundtrip():
    assert StepKind(1) is StepKind.TOOL_CALL


# ------------------------------------------------------------------ trusted construction
def _token_columns(**overrides):
    cols = dict(
        group=[0, 0, 1],
        outcome=[1.0, 0.0, 1.0],
        step_offsets=[0, 2, 3, 3],
        response_mask=torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool),
        step_token_start=[0, 3, 0],
        step_token_end=[2, 4, 3],
    )
    cols.update(overrides)
    return cols


def test_trusted_skips_only_what_is_vouched_for():
    wrong_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with pytest.raises(RolloutError, match="outside every step span"):
        Rollouts(**_token_columns(response_mask=wrong_mask))
    Rollouts.trusted({"token_cover"}, **_token_columns(response_mask=wrong_mask))  # vouched: not compared
    with pytest.raises(RolloutError, match="finite"):
        Rollouts.trusted({"token_cover"}, **_token_columns(outcome=[1.0, float("nan"), 0.0]))
    assert Rollouts.trusted({"values"}, **_token_columns(outcome=[1.0, float("nan"), 0.0])).outcome.isnan().any()
    for overrides, fragment in [
        (dict(step_token_start=[0, 1, 0]), "before the previous step ends"),
        (dict(step_token_end=[2, 9, 3]), "outside"),
        (dict(step_offsets=[0, 2, 1, 3]), "decrease"),
        (dict(group=[0, 0, 2]), "dense"),
        (dict(kind=[0, 0, 0]), "has tool calls"),
    ]:
        if "kind" in overrides:
            overrides.update(call_offsets=[0, 1, 1, 1])
        with pytest.raises(RolloutError, match=fragment):
            Rollouts.trusted({"token_cover", "values"}, **_token_columns(**overrides))
    with pytest.raises(ValueError, match="unknown vouch"):
        Rollouts.trusted({"everything"}, **_token_columns())


def test_trusted_vouch_ends_with_its_construction():
    Rollouts.trusted({"token_cover", "values"}, **_token_columns())
    with pytest.raises(RolloutError, match="finite"):  # the next ordinary construction checks all again
        Rollouts(**_token_columns(outcome=[1.0, float("inf"), 0.0]))
    with pytest.raises(RolloutError):
        Rollouts.trusted({"token_cover"}, **_token_columns(step_offsets=[0, 2]))
    with pytest.raises(RolloutError, match="outside every step span"):  # not left set by the failure
        Rollouts(**_token_columns(response_mask=torch.ones(3, 5, dtype=torch.bool)))


def test_select_stays_validated_where_it_can_break():
    r = Rollouts(**_token_columns(), texts=Texts.create(3, 2, 3, 0, ids=["a", "b", "c"]))
    with pytest.raises(RolloutError, match="not unique"):
        r.select([0, 0])
    sub = r.select([2, 0])
    full = Rollouts(**columns_of(sub), texts=sub.texts)  # the ordinary, fully validated construction
    assert full.equals(sub)


def test_tokens_per_trajectory_is_the_mask_row_sum():
    r = Rollouts(**_token_columns())
    assert r.tokens_per_trajectory.tolist() == r.response_mask.sum(1).tolist() == [3, 3, 0]
    with pytest.raises(RolloutError, match="no token columns"):
        _ = small().tokens_per_trajectory


def test_default_texts_are_numbered_and_blank():
    t = Texts.create(12, 3, 5, 0)
    assert t.ids.to_pylist() == [str(i) for i in range(12)]
    assert t.group_names.to_pylist() == ["0", "1", "2"]
    assert t.action.to_pylist() == [""] * 5 and t.call_name.to_pylist() == []
    for name in ("ids", "action", "call_name"):
        getattr(t, name).validate(full=True)
        assert str(getattr(t, name).type) == "large_string"


def test_replace_checks_the_token_cover_only_when_it_can_change(monkeypatch):
    from stepcredit.core import segments

    r = Rollouts(**_token_columns(), texts=Texts.create(3, 2, 3, 0))
    calls = []
    real = segments.span_coverage
    monkeypatch.setattr(segments, "span_coverage", lambda *a: calls.append(1) or real(*a))
    shaped = r.replace(outcome=torch.tensor([0.5, 0.0, 1.0]))
    assert calls == [] and shaped.outcome.tolist() == [0.5, 0.0, 1.0]
    assert torch.equal(shaped.response_mask, r.response_mask)
    with pytest.raises(RolloutError, match="finite"):  # every other check still runs
        r.replace(outcome=torch.tensor([0.5, float("inf"), 1.0]))
    bad_mask = r.response_mask.clone()
    bad_mask[0, 4] = True  # outside every step span
    with pytest.raises(RolloutError, match="outside every step span"):
        r.replace(response_mask=bad_mask)
    assert calls  # a new mask is compared with the spans
