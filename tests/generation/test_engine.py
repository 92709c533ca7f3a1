"""The rollout engine: chains and Tree-GRPO trees from scripted policies (token tests: test_tokens.py)."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence

import pytest
import torch

from stepcredit import Recipe
from stepcredit.core import TOOL_ERROR
from stepcredit.envs import env_factory
from stepcredit.generation import (
    Context,
    Generation,
    NoisyOracle,
    OraclePolicy,
    SystematicOracle,
    rollout_chains,
    rollout_trees,
)

CALC = env_factory("calculator", depth=3)


def test_chains_are_groups_of_runs_with_env_labels() -> None:
    batch = rollout_chains(CALC, NoisyOracle(0.2, seed=1), range(6), group_size=4, seed=0)
    r = batch.rollouts
    assert r.num_trajectories == 24 and r.num_groups == 6
    assert torch.equal(r.group, torch.arange(6).repeat_interleave(4))
    assert r.label is not None and r.call_label is not None and r.tree is None
    # a run succeeds exactly when it made no wrong step (calculator: every mistake dooms)
    wrong = torch.zeros(r.num_trajectories, dtype=torch.bool).index_put_(
        (r.step_traj[r.label == -1],), torch.tensor(True)
    )
    assert torch.equal(r.outcome == 1, ~wrong)
    assert 0 < batch.success_rate < 1
    assert r.texts.ids.to_pylist()[:2] == ["calculator/train/0#c0", "calculator/train/0#c1"]


def test_the_oracle_wins_every_run() -> None:
    batch = rollout_chains(CALC, OraclePolicy(seed=0), range(10), group_size=3)
    assert batch.success_rate == 1.0
    assert bool((batch.rollouts.label == 1).all())


def test_same_seed_same_batch_and_batching_does_not_change_it() -> None:
    a = rollout_chains(CALC, NoisyOracle(0.3, seed=4), range(5), group_size=4, seed=2)
    b = rollout_chains(CALC, NoisyOracle(0.3, seed=4), range(5), group_size=4, seed=2, batch_size=3)
    c = rollout_chains(CALC, NoisyOracle(0.3, seed=5), range(5), group_size=4, seed=2)
    assert a.rollouts.equals(b.rollouts)
    assert not a.rollouts.equals(c.rollouts)


def test_policies_are_asked_for_whole_batches() -> None:
    sizes: list[int] = []

    class Counting(OraclePolicy):
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            sizes.append(len(contexts))
            return super().act(contexts)

    rollout_chains(CALC, Counting(), range(4), group_size=5)
    assert sizes[0] == 20  # every live run in one call, not one env at a time
    sizes.clear()
    rollout_chains(CALC, Counting(), range(4), group_size=5, batch_size=8)
    assert max(sizes) == 8


def test_a_policy_that_answers_too_few_is_refused() -> None:
    class Short:
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            return [Generation("answer 1")]

    with pytest.raises(ValueError, match="1 generations for 3 contexts"):
        rollout_chains(CALC, Short(), range(1), group_size=3)


def test_a_malformed_call_is_recorded_as_a_failed_call() -> None:
    """``mul(a=2, b=`` is a call of the calculator's ``mul`` the env cannot parse: a failed call with the
    raw text as arguments and label 0; text that is no call of a tool stays a step without calls."""
    actions = iter(["mul(a=2, b=", "launch(x=1", "hello", "answer 0"])

    class Scripted:
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            return [Generation(next(actions)) for _ in contexts]

    r = rollout_chains(CALC, Scripted(), range(1), group_size=1).rollouts
    assert r.calls_per_step.tolist() == [1, 0, 0, 0]
    assert r.texts.call_name.to_pylist() == ["mul"] and r.texts.call_arguments.to_pylist() == ["mul(a=2, b="]
    assert r.texts.call_result.to_pylist()[0].startswith("Error: malformed action")
    assert r.call_ok.tolist() == [TOOL_ERROR] and r.call_label is not None and r.call_label.tolist() == [0]
    assert r.label is not None and r.label.tolist()[:3] == [0, 0, 0]


def test_trees_share_prefixes_and_have_the_expected_leaves() -> None:
    batch = rollout_trees(CALC, NoisyOracle(0.25, seed=0), range(5), trees=2, expand=3, iterations=2, seed=1)
    r = batch.rollouts
    assert r.tree is not None
    per_tree = Counter(zip(r.group.tolist(), r.tree.tolist(), strict=True))
    assert len(per_tree) == 10 and set(per_tree.values()) == {1 + 3 * 2}
    # a node id names one step: every trajectory passing through it shows the same action and observation
    actions, observations = r.texts.action.to_pylist(), r.texts.observation.to_pylist()
    seen: dict[int, tuple[str, str]] = {}
    for s in range(r.num_steps):
        key = int(r.state[s])
        pair = (actions[s], observations[s])
        assert seen.setdefault(key, pair) == pair
    # prefixes really are shared: fewer distinct nodes than steps, and each path is a prefix-closed chain
    assert len(seen) < r.num_steps
    for path in batch.paths:
        for parent, child in itertools.pairwise(path):
            assert batch.nodes[child].parent == parent
        assert batch.nodes[path[0]].parent is None and batch.nodes[path[-1]].terminal
    # nodes of different trees are never shared
    owner: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for i, path in enumerate(batch.paths):
        for n in path:
            owner[n].add((int(r.group[i]), int(r.tree[i])))
    assert all(len(v) == 1 for v in owner.values())


def test_tree_credit_runs_on_engine_trees() -> None:
    batch = rollout_trees(CALC, NoisyOracle(0.25, seed=0), range(6), trees=2, expand=2, iterations=1, seed=0)
    credit = Recipe.builtin("tree_grpo").run(batch.rollouts).credit
    assert torch.isfinite(credit.per_step(batch.rollouts)).all()


def test_keep_samples_leaves_and_expand_from_tool_results() -> None:
    batch = rollout_trees(CALC, NoisyOracle(0.25, seed=0), range(4), trees=2, expand=3, iterations=1, keep=2)
    assert batch.rollouts.num_trajectories == 4 * 2 * 2
    tool = rollout_trees(CALC, OraclePolicy(seed=0), range(4), trees=1, expand=4, iterations=1, expand_from="tool")
    branched = 0
    groups = tool.rollouts.group.tolist()
    first_of = {g: tool.paths[groups.index(g)] for g in set(groups)}  # each task's first chain
    for k, path in enumerate(tool.paths):
        if path is first_of[groups[k]]:
            continue
        first_new = next(i for i, n in enumerate(path) if n not in first_of[groups[k]])
        if first_new > 0:  # branched after a node: that node made a tool call
            assert tool.nodes[path[first_new - 1]].has_tool_result
            branched += 1
    assert branched > 0  # some branches did start after a node (not all from the root)


@pytest.mark.parametrize(
    "kwargs", [{"trees": 0}, {"expand": 0}, {"iterations": -1}, {"keep": 0}, {"expand_from": "entropy"}]
)
def test_bad_tree_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        rollout_trees(CALC, OraclePolicy(), range(1), **kwargs)


def test_systematic_mistakes_repeat_across_runs_of_a_task() -> None:
    policy = SystematicOracle(0.35, repeat=1.0, seed=3)
    r = rollout_chains(CALC, policy, range(12), group_size=6, seed=0).rollouts
    wrong = r.label == -1
    actions = r.texts.action.to_pylist()
    repeats = Counter(
        (int(r.step_group[s]), actions[s]) for s in torch.nonzero(wrong).flatten().tolist()
    )
    # with repeat=1 a misconception is made by every run reaching its decision point
    assert max(repeats.values()) >= 4
    noisy = rollout_chains(CALC, NoisyOracle(0.2, seed=3), range(12), group_size=6, seed=0).rollouts
    noisy_actions = noisy.texts.action.to_pylist()
    noisy_wrong = Counter(
        (int(noisy.step_group[s]), noisy_actions[s]) for s in torch.nonzero(noisy.label == -1).flatten().tolist()
    )
    assert sum(v for v in repeats.values() if v > 1) / sum(repeats.values()) > sum(
        v for v in noisy_wrong.values() if v > 1
    ) / max(sum(noisy_wrong.values()), 1)
