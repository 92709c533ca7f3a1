"""What every task family promises (run for each registered family): the gymnasium API, determinism,
snapshots, an oracle that always wins with correct steps, wrong steps labelled −1, and malformed
actions that never raise."""

from __future__ import annotations

import json
import string

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepcredit.envs import ENV_IDS, FAMILIES, ToolEnv, env_factory, parse_action

FAMILY_NAMES = sorted(FAMILIES)


def play(env: ToolEnv, task: int, pick: int = 0) -> tuple[list[dict], float]:
    _, info = env.reset(seed=task, options={"task": task})
    infos, reward, done = [], 0.0, False
    while not done:
        expert = info["expert"]
        _, reward, terminated, truncated, info = env.step(expert[pick % len(expert)])
        infos.append(info)
        done = terminated or truncated
    return infos, float(reward)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_registered_with_gymnasium_and_passes_its_checker(family: str) -> None:
    env = gymnasium.make(ENV_IDS[family], depth=2)
    obs, info = env.reset(seed=3)
    assert isinstance(obs, str) and info["task"].startswith(f"{family}/train/")
    assert set(obs) <= set(string.printable)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_the_oracle_solves_every_task_with_correct_steps(family: str, split: str) -> None:
    for depth in sorted({min(d, FAMILIES[family].max_depth) for d in (1, 2, 4, 6)}):
        env = FAMILIES[family](split=split, depth=depth, distractors=2, noise=0.3)  # type: ignore[arg-type]
        for task in range(25):
            infos, reward = play(env, task, pick=task)
            assert reward == 1.0 and infos[-1]["success"], (family, split, depth, task)
            assert all(i["label"] == 1 for i in infos), [(i["label"], i["calls"]) for i in infos]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_mistake_is_labelled_wrong_and_the_expert_cannot_save_a_doomed_run(family: str) -> None:
    env = FAMILIES[family](depth=3)
    seen = set()
    for task in range(12):
        _, info = env.reset(options={"task": task})
        done = False
        while not done:  # every mistake offered at every decision point of the oracle's path
            at = env.snapshot()
            for kind, action in info["mistakes"]:
                env.restore(at)
                _, reward, terminated, truncated, after = env.step(action)
                assert after["label"] == -1, (family, kind, action, after)
                seen.add(kind)
                while not (terminated or truncated):
                    _, reward, terminated, truncated, after = env.step(after["expert"][0])
                assert reward == 0.0, (family, task, kind, action)
            env.restore(at)
            _, _, terminated, truncated, info = env.step(info["expert"][0])
            done = terminated or truncated
    assert len(seen) >= 2, seen


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_snapshot_restore_replays_the_same_future(family: str) -> None:
    env = FAMILIES[family](depth=3, noise=0.5, distractors=4)
    _, info = env.reset(seed=1, options={"task": 5})
    env.step(info["expert"][0])
    snap = env.snapshot()
    actions = ["get_weather(city=Oslo)", "nonsense(", *info["expert"][:1]]

    def future() -> list[tuple]:
        out = []
        for a in actions:
            obs, reward, term, trunc, i = env.step(a)
            out.append((obs, reward, term, trunc, i["label"], json.dumps(i["calls"])))
            if term or trunc:
                break
        return out

    first = future()
    env.restore(snap)
    assert future() == first
    env.restore(snap)  # a snapshot can be restored again
    assert future() == first


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_seeds_reproduce_and_splits_differ(family: str) -> None:
    a, b = FAMILIES[family](), FAMILIES[family]()
    assert a.reset(seed=11)[0] == b.reset(seed=11)[0]
    prompts = {FAMILIES[family](split=s).reset(options={"task": 2})[0] for s in ("train", "test")}
    assert len(prompts) == 2
    train = {FAMILIES[family]().reset(options={"task": t})[0] for t in range(30)}
    assert len(train) > 20  # tasks differ from each other


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_distractor_and_erroring_calls_are_neutral(family: str) -> None:
    env = FAMILIES[family](distractors=4)
    env.reset(options={"task": 0})
    for action in ("get_weather(city=Oslo)", "convert_currency(amount=3, to=EUR)", "no_such_tool(x=1)"):
        _, _, _, _, info = env.step(action)
        assert info["label"] == 0
    assert info["tool_ok"] == 0 and info["calls"][0]["ok"] == 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_chat_mode_lists_schemas_and_accepts_openai_calls(family: str) -> None:
    env = FAMILIES[family](chat=True)
    obs, info = env.reset(options={"task": 1})
    assert '"type":"function"' in obs
    call = parse_action(info["expert"][0])
    assert call.calls, "every family starts with a tool call"
    c = call.calls[0]
    function = {"name": c.name, "arguments": json.dumps(c.arguments)}
    message = {"role": "assistant", "tool_calls": [{"type": "function", "function": function}]}
    _, _, _, _, after = env.step(message)
    assert after["label"] == 1


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bad_knobs_are_refused(family: str) -> None:
    for knobs in ({"split": "dev"}, {"depth": 0}, {"distractors": 9}, {"noise": 2.0}, {"max_steps": 0}):
        with pytest.raises(ValueError):
            env_factory(family, **knobs)
    with pytest.raises(ValueError, match="unknown environment"):
        env_factory("chess")
    with pytest.raises(ValueError, match="task"):
        FAMILIES[family]().reset(options={"task": -1})


@pytest.mark.parametrize("family", FAMILY_NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.one_of(st.text(max_size=200), st.text(alphabet=string.printable, max_size=120)))
def test_any_text_action_gives_an_observation_never_an_exception(family: str, action: str) -> None:
    env = FAMILIES[family](distractors=4)
    env.reset(options={"task": 0})
    obs, _, terminated, _, info = env.step(action)
    assert set(obs) <= set(string.printable)
    assert info["label"] in (-1, 0, 1) and info["tool_ok"] in (-1, 0, 1)
    if parse_action(action).malformed:
        assert obs.startswith("Error: malformed action") and info["label"] == 0 and not terminated
