"""Trainer tensors (verl layout) → Rollouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stepcredit import RolloutError, StepKind, gigpo
from stepcredit.core import text_keys
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


# steps of MASK3, row-major: 0 = row 0 [0, 2), 1 = row 0 [3, 4), 2 = row 1 [1, 4), 3 = row 2 [0, 1)
MASK3 = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 0], [1, 0, 0, 0, 0]])


def test_flat_step_rewards_go_to_reward_in_step_order():
    r = from_trainer_tensors(
        MASK3, [0, 0, 1], outcome=torch.zeros(3), step_rewards=torch.tensor([0.5, -1.0, 2.0, 0.25])
    )
    assert r.reward.dtype == torch.float32
    assert r.reward.tolist() == [0.5, -1.0, 2.0, 0.25]


def test_token_level_step_rewards_sum_over_each_step_span():
    rewards = torch.tensor(
        [
            [0.0, 1.0, 0.0, 3.0, 0.0],  # step 0 ends with 1, step 1 with 3
            [0.0, 0.5, 0.0, 0.25, 0.0],  # step 2 holds 0.5 + 0.25
            [0.0, 0.0, 0.0, 0.0, 0.0],  # step 3 got nothing
        ],
        dtype=torch.float64,
    )
    r = from_trainer_tensors(MASK3, [0, 0, 1], outcome=torch.zeros(3), step_rewards=rewards)
    assert r.reward.dtype == torch.float32
    assert r.reward.tolist() == [1.0, 3.0, 0.75, 0.0]
    assert r.outcome.tolist() == [0.0, 0.0, 0.0]  # step rewards stay out of the outcome


def test_state_keys_are_passed_through():
    r = from_trainer_tensors(MASK3, [0, 0, 1], outcome=torch.zeros(3), state=[7, 8, 7, 7])
    assert r.state.tolist() == [7, 8, 7, 7]
    ids, k = r.decision_points  # step 3 is in another group: (1, 7) is its own decision point
    assert k == 3
    assert ids[0] == ids[2] and len({int(ids[0]), int(ids[1]), int(ids[3])}) == 3


def test_anchor_observations_hash_within_their_group():
    # groups: rows 0 and 1 in "a", row 2 in "b"; steps 0 and 2 (group a) and 3 (group b) see "start"
    r = from_trainer_tensors(
        MASK3,
        ["a", "a", "b"],
        outcome=torch.zeros(3),
        anchor_observations=["start", "after search", "start", "start"],
    )
    key = r.state.tolist()
    assert key[0] == key[2]  # same text, same group
    assert key[0] != key[3]  # same text, other group
    assert key[0] != key[1]
    assert r.state.tolist() == text_keys(["start", "after search", "start", "start"], [0, 0, 0, 1]).tolist()


def test_anchor_observations_reach_the_similarity_path():
    # gigpo(similarity=...) reads anchors as texts: they must be the given ones, not blanks
    from stepcredit.views import anchor_observations

    anchors = ["start", "after search", "start", "start"]
    r = from_trainer_tensors(MASK3, ["a", "a", "b"], outcome=torch.zeros(3), anchor_observations=anchors)
    assert anchor_observations(r) == anchors
    from stepcredit.estimators.anchor import state_groups

    ids, _ = state_groups(r, similarity=0.9)
    assert ids[0] == ids[2] and len({int(ids[0]), int(ids[1]), int(ids[3])}) == 3


def test_tree_ids_from_strings_are_dense_in_order_of_first_appearance():
    tree = np.array(["t-9", "t-1", "t-9"], dtype=object)
    r = from_trainer_tensors(MASK3, [0, 0, 0], outcome=torch.zeros(3), tree=tree)
    assert r.tree.dtype == torch.int64
    assert r.tree.tolist() == [0, 1, 0]
    r = from_trainer_tensors(MASK3, [0, 0, 0], outcome=torch.zeros(3), tree=torch.tensor([5, 5, 2]))
    assert r.tree.tolist() == [0, 0, 1]


def test_new_columns_default_when_not_given():
    r = from_trainer_tensors(MASK3, [0, 0, 1], outcome=torch.zeros(3))
    assert r.reward.tolist() == [0.0] * 4
    assert r.state.unique().numel() == 4
    assert r.tree is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            dict(step_rewards=torch.zeros(3)),
            r"'step_rewards'.*expected 4 step rewards \(one per step: runs of response_mask == 1\), got 3",
        ),
        (dict(step_rewards=torch.zeros(3, 4)), r"'step_rewards'.*expected token-level step rewards of shape \(3, 5\)"),
        (dict(step_rewards=torch.zeros(3, 5, 1)), r"'step_rewards'.*expected \[S\] per-step or \(N, T\)"),
        (dict(step_rewards=torch.tensor([0.0, float("nan"), 0.0, 0.0])), r"'step_rewards'.*finite.*step 1"),
        (
            dict(step_rewards=torch.tensor([[0.0] * 5, [0.0, float("inf"), 0, 0, 0], [0.0] * 5])),
            r"'step_rewards'.*finite",
        ),
        (
            dict(step_rewards=torch.tensor([[0.0, 0, 1, 0, 0], [0.0] * 5, [0.0] * 5])),
            r"'row-0'.*'step_rewards'.*token 2 lies outside every step",
        ),
        (dict(state=[1, 2, 3]), r"'state'.*expected 4 state keys \(one per step.*got shape \(3,\)"),
        (dict(state=torch.zeros(4, 1, dtype=torch.int64)), r"'state'.*expected 4 state keys"),
        (
            dict(state=[1, 2, 3, 4], anchor_observations=["a"] * 4),
            r"'state'.*at most one of state and anchor_observations",
        ),
        (dict(anchor_observations=["a"] * 5), r"'anchor_observations'.*expected 4 anchor observations.*got 5"),
        (dict(anchor_observations="abcd"), r"'anchor_observations'.*single string"),
        (
            dict(anchor_observations=["a", None, "b", "c"]),
            r"'anchor_observations'.*expected strings, got NoneType at step 1",
        ),
        (dict(tree=["x", "y"]), r"'tree'.*expected 3 tree ids \(one per row\), got 2"),
        (dict(tree=np.zeros((3, 2))), r"'tree'.*expected 3 tree ids"),
    ],
)
def test_bad_step_rewards_states_and_trees(kwargs, fragment):
    with pytest.raises(RolloutError, match=fragment):
        from_trainer_tensors(MASK3, [0, 0, 1], outcome=torch.zeros(3), ids=["row-0", "row-1", "row-2"], **kwargs)


def test_gigpo_step_component_from_shared_anchor_observation():
    # one group, two trajectories of two steps each; both first steps act on the prompt
    mask = torch.tensor([[1, 0, 1], [1, 0, 1]])
    kwargs = dict(outcome=torch.tensor([1.0, 0.0]))
    shared = from_trainer_tensors(
        mask, ["q", "q"], anchor_observations=["prompt", "obs A", "prompt", "obs B"], **kwargs
    )
    credit = gigpo(shared, gamma=0.5)
    # first-step returns G = γ · outcome: 0.5 and 0 share the anchor → ±0.25 (mean_norm); others alone → 0
    assert credit.step.tolist() == pytest.approx([0.25, 0.0, -0.25, 0.0])
    distinct = from_trainer_tensors(mask, ["q", "q"], anchor_observations=["p1", "obs A", "p2", "obs B"], **kwargs)
    assert gigpo(distinct, gamma=0.5).step.tolist() == [0.0] * 4


def test_gigpo_step_rewards_from_token_level_tensor():
    # a turn reward on the last token of the first turn raises that step's return
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 1]])
    turn = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    r = from_trainer_tensors(
        mask, [0, 0], outcome=torch.zeros(2), step_rewards=turn, anchor_observations=["p", "a", "p", "b"]
    )
    assert r.reward.tolist() == [1.0, 0.0, 0.0, 0.0]
    step = gigpo(r, gamma=0.5).step
    assert step.tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])
