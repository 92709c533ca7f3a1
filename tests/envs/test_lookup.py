"""The lookup-joins family: oracle, valid alternatives, mistakes, snapshots, splits, noise, bad calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG
from stepcredit.envs.lookup import LookupEnv

SPLITS = ("train", "test")
DEPTHS = range(1, 7)
KINDS = {"wrong_user", "wrong_order", "skip_item", "arithmetic", "wrong_pick"}


def _finish(env: LookupEnv, info: dict[str, Any], pick: int = 0) -> tuple[bool, list[int], dict[str, Any]]:
    """Follow the expert (its ``pick``-th action, clipped) to the end: (success, labels, last info)."""
    labels = []
    while True:
        expert = info["expert"]
        _, _, terminated, truncated, info = env.step(expert[min(pick, len(expert) - 1)])
        labels.append(info["label"])
        if terminated or truncated:
            return bool(info["success"]), labels, info


def _oracle_path(env: LookupEnv, task: int) -> list[tuple[Any, dict[str, Any]]]:
    """(snapshot, info) at every decision point of the oracle run of ``task`` (the env is left at its end)."""
    _, info = env.reset(options={"task": task})
    points = []
    while True:
        points.append((env.snapshot(), info))
        _, _, terminated, truncated, info = env.step(info["expert"][0])
        if terminated or truncated:
            return points


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_oracle_solves_every_task_with_every_step_correct(split: str, depth: int) -> None:
    env = LookupEnv(split=split, depth=depth)  # type: ignore[arg-type]
    for task in range(50):
        for pick in (0, 99):  # the first and the last valid action at every step
            _, info = env.reset(options={"task": task})
            success, labels, _ = _finish(env, info, pick)
            assert success, (split, depth, task, pick)
            assert labels == [CORRECT] * len(labels)
            assert len(labels) <= env.max_steps


@pytest.mark.parametrize("split", SPLITS)
def test_every_expert_alternative_is_valid(split: str) -> None:
    alternatives = 0
    for depth in DEPTHS:
        env = LookupEnv(split=split, depth=depth)  # type: ignore[arg-type]
        for task in range(6):
            for snap, info in _oracle_path(env, task):
                for action in info["expert"]:
                    env.restore(snap)
                    _, _, terminated, _, step_info = env.step(action)
                    assert step_info["label"] == CORRECT, action
                    if not terminated:
                        success, labels, _ = _finish(env, step_info)
                        assert success and set(labels) == {CORRECT}
                alternatives += len(info["expert"]) > 1
    assert alternatives > 0  # tasks do have several valid solutions


@pytest.mark.parametrize("split", SPLITS)
def test_each_mistake_is_wrong_and_dooms_the_run(split: str) -> None:
    kinds: set[str] = set()
    for depth in DEPTHS:
        env = LookupEnv(split=split, depth=depth)  # type: ignore[arg-type]
        for task in range(10):
            for snap, info in _oracle_path(env, task):
                for kind, action in info["mistakes"]:
                    assert kind in KINDS
                    kinds.add(kind)
                    env.restore(snap)
                    _, _, terminated, _, step_info = env.step(action)
                    assert step_info["label"] == WRONG, (kind, action)
                    if terminated:
                        assert not step_info["success"]
                        continue
                    success, labels, _ = _finish(env, step_info)  # the expert carries on from the beliefs
                    assert not success, (depth, task, kind, action)
                    assert labels[-1] == WRONG  # it reaches its (wrong) answer within the budget
    assert kinds == KINDS


def test_mistakes_are_deterministic() -> None:
    env = LookupEnv(depth=3)
    for task in range(20):
        first = [info["mistakes"] for _, info in _oracle_path(env, task)]
        second = [info["mistakes"] for _, info in _oracle_path(env, task)]
        assert first == second


def _task_with(kind: str, depth: int = 3) -> tuple[LookupEnv, int]:
    env = LookupEnv(depth=depth)
    for task in range(200):
        env.reset(options={"task": task})
        if env._state.kind == kind:
            return env, task
    raise AssertionError(kind)


def test_labels_of_wrong_user_chain() -> None:
    env, task = _task_with("total_recent")
    _, info = env.reset(options={"task": task})
    state = env._state
    target = state.users[state.target]
    other = state.users[target.similar[0]]
    _, _, _, _, info = env.step(f'find_user(name="{other.name}")')
    assert info["label"] == WRONG
    _, _, _, _, info = env.step(f'find_user(name="{other.name}")')  # a re-read
    assert info["label"] == NEUTRAL
    assert info["expert"] == [f"list_orders(user_id={other.id})"]  # the expert follows the belief
    _, _, _, _, info = env.step(info["expert"][0])
    assert info["label"] == NEUTRAL
    _, _, _, _, info = env.step(f'find_user(name="{target.name}")')  # the agent corrects itself
    assert info["label"] == CORRECT
    success, labels, _ = _finish(env, info)
    assert success and set(labels) == {CORRECT}


def test_labels_of_wrong_order_and_unrelated_reads() -> None:
    env, task = _task_with("total_recent")
    _, info = env.reset(options={"task": task})
    state = env._state
    target = state.target
    stranger = next(u for u in state.users if u != target and u not in state.users[target].similar)
    _, _, _, _, info = env.step(info["expert"][0])  # find_user
    _, _, _, _, info = env.step(f'find_user(name="{state.users[stranger].name}")')
    assert info["label"] == NEUTRAL  # another user once the asked one is found
    _, _, _, _, info = env.step(info["expert"][0])  # list_orders
    _, _, _, _, info = env.step(f"list_orders(user_id={stranger})")
    assert info["label"] == NEUTRAL  # another user's orders once the list is read
    _, _, _, _, info = env.step(f"get_order(order_id={state.lists[stranger][0]})")
    assert info["label"] == NEUTRAL  # an unrelated user's order
    older = next(o for o in state.lists[target] if o not in state.selected[target])
    snap = env.snapshot()
    _, _, _, _, info = env.step(f"get_order(order_id={older})")
    assert info["label"] == WRONG
    for action in info["expert"]:  # the expert looks up the older order's products
        assert action.startswith("get_product")
    success, labels, _ = _finish(env, info)
    assert not success and labels[-1] == WRONG
    env.restore(snap)
    _, _, _, _, info = env.step(f"get_order(order_id={state.selected[target][0]})")
    assert info["label"] == CORRECT
    _, _, _, _, info = env.step(f"get_order(order_id={older})")
    assert info["label"] == NEUTRAL  # the selected order is held: nothing depends on this one
    success, labels, _ = _finish(env, info)
    assert success and set(labels) == {CORRECT}


def test_across_orders_an_excluded_order_is_added_to_the_tally() -> None:
    env, task = _task_with("items_delivered")
    _, info = env.reset(options={"task": task})
    for _ in range(2):
        _, _, _, _, info = env.step(info["expert"][0])
    state = env._state
    excluded = next(o for o in state.lists[state.target] if o not in state.selected[state.target])
    selected = state.selected[state.target]
    _, _, _, _, info = env.step(f"get_order(order_id={selected[0]})")
    assert info["label"] == CORRECT
    _, _, _, _, info = env.step(f"get_order(order_id={excluded})")
    assert info["label"] == WRONG
    success, labels, _ = _finish(env, info)
    assert not success and labels[-1] == WRONG and labels.count(CORRECT) == len(selected) - 1


def test_snapshot_restore_replays_the_same_observations() -> None:
    env = LookupEnv(depth=4, noise=0.5)
    _, info = env.reset(seed=3, options={"task": 7})
    _, _, _, _, info = env.step(info["expert"][0])
    snap = env.snapshot()

    def play() -> list[tuple[str, int]]:
        out, step_info = [], info
        while True:
            obs, _, terminated, truncated, step_info = env.step(step_info["expert"][-1])
            out.append((obs, step_info["label"]))
            if terminated or truncated:
                return out

    first = play()
    env.restore(snap)
    assert play() == first
    env.restore(snap)
    assert play() == first


def test_same_index_same_task_and_splits_use_disjoint_entities() -> None:
    def entities(env: LookupEnv) -> set[str]:
        s = env._state
        names = {u.name for u in s.users.values()} | {p.name for p in s.products.values()}
        return names | set(s.users) | set(s.orders) | set(s.products)

    seen: dict[str, set[str]] = {"train": set(), "test": set()}
    for split in SPLITS:
        for task in range(30):
            a, b = LookupEnv(split=split), LookupEnv(split=split)  # type: ignore[arg-type]
            obs_a, _ = a.reset(seed=1, options={"task": task})
            obs_b, _ = b.reset(seed=2, options={"task": task})
            assert obs_a == obs_b
            seen[split] |= entities(a)
    assert not seen["train"] & seen["test"]


def test_distractor_tools_are_neutral() -> None:
    env = LookupEnv(depth=2, distractors=4)
    _, info = env.reset(options={"task": 1})
    for action in ("get_weather(city=Oslo)", "get_time(city=Lima)", "send_email(to=a@b.c, text=hi)"):
        _, _, _, _, info = env.step(action)
        assert info["label"] == NEUTRAL and info["tool_ok"] == 1
    success, labels, _ = _finish(env, info)
    assert success and set(labels) == {CORRECT}


@pytest.mark.parametrize(
    "action",
    [
        "get_order(order_id=",
        "frobnicate(x=1)",
        "get_order()",
        "get_order(id=o1)",
        "get_order(order_id=o1)",
        "get_product(product_id=zzz)",
        "list_orders(user_id=u1)",
        "find_user(name=Nobody)",
        "find_user(name=3.5)",
        '{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_order", '
        '"arguments": "{\\"order_id\\": [1]}"}}]}',
        "",
    ],
)
def test_bad_calls_are_neutral_errors(action: str) -> None:
    env = LookupEnv(depth=2)
    _, info = env.reset(options={"task": 0})
    key = info["state_key"]
    _, _, terminated, _, info = env.step(action)
    assert not terminated
    assert info["label"] == NEUTRAL and info["tool_ok"] != 1
    assert info["state_key"] == key


def test_ids_are_read_leniently() -> None:
    env, task = _task_with("total_recent")
    _, info = env.reset(options={"task": task})
    for _ in range(2):
        _, _, _, _, info = env.step(info["expert"][0])
    oid = env._state.selected[env._state.target][0]
    obs, _, _, _, info = env.step(f"get_order(order_id={oid[1:]})")  # the bare number
    assert info["label"] == CORRECT and json.loads(obs)["id"] == oid


def test_noise_changes_results_not_labels() -> None:
    changed = 0
    for task in range(10):
        clean, noisy = LookupEnv(depth=3), LookupEnv(depth=3, noise=1.0)
        _, info = clean.reset(seed=0, options={"task": task})
        noisy.reset(seed=0, options={"task": task})
        while True:
            action = info["expert"][0]
            obs_c, _, terminated, truncated, info = clean.step(action)
            obs_n, _, _, _, info_n = noisy.step(action)
            assert info_n["label"] == info["label"]
            assert obs_n.isascii() and obs_n.isprintable()
            changed += obs_c != obs_n
            if terminated or truncated:
                break
        assert info["success"] and info_n["success"]
    assert changed > 0


def test_observations_are_printable_json() -> None:
    env = LookupEnv(depth=3, noise=0.3, chat=True)
    obs, info = env.reset(options={"task": 4})
    assert all(c.isprintable() or c == "\n" for c in obs) and obs.isascii()
    while True:
        action = info["expert"][0]
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
        json.loads(obs)


def test_depth_bounds() -> None:
    with pytest.raises(ValueError):
        LookupEnv(depth=0)
    with pytest.raises(ValueError):
        LookupEnv(depth=51)
    assert LookupEnv(depth=3).max_steps == 14
    assert LookupEnv(depth=3, max_steps=5).max_steps == 5
