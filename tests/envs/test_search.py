"""The search family: BM25 retrieval over the task's corpus, near-namesake distractors, the labelling
rule (a new fact of the true chain +1, a search for a namesake −1, anything else 0)."""

from __future__ import annotations

import gymnasium
import pytest

import stepcredit.envs  # noqa: F401 - registers the ids
from stepcredit.envs import CORRECT, NEUTRAL, WRONG, SearchEnv
from stepcredit.envs.actions import parse_action


def _start(depth: int = 3, task: int = 4, **knobs: object) -> tuple[SearchEnv, dict]:
    env = SearchEnv(depth=depth, **knobs)  # type: ignore[arg-type]
    _, info = env.reset(options={"task": task})
    return env, info


def test_the_expert_offers_several_phrasings_that_all_retrieve_the_fact() -> None:
    _, info = _start()
    assert len(info["expert"]) >= 2
    for action in info["expert"]:
        env2, _ = _start()
        _, _, _, _, after = env2.step(action)
        assert after["label"] == CORRECT, action


def test_a_search_for_the_namesake_is_wrong_and_dooms_the_run() -> None:
    env, info = _start()
    wrong = dict(info["mistakes"])["wrong_bridge"]
    _, _, _, _, info = env.step(wrong)
    assert info["label"] == WRONG
    reward = 0.0
    while info["expert"]:
        _, reward, done, _, info = env.step(info["expert"][0])
        assert info["label"] in (NEUTRAL, WRONG)  # the namesake's chain: it follows from the mistake
        if done:
            break
    assert reward == 0.0 and not info["success"]


def test_vague_and_repeated_searches_add_nothing() -> None:
    env, info = _start()
    first = info["expert"][0]
    _, _, _, _, info = env.step(first)
    assert info["label"] == CORRECT
    _, _, _, _, info = env.step(first)  # the same fact again
    assert info["label"] == NEUTRAL
    obs, _, _, _, info = env.step('search(query="river market archive")')
    assert info["label"] == NEUTRAL and (obs.startswith("[p") or obs == "no results")
    obs, _, _, _, info = env.step('search(query="the of in")')
    assert obs.startswith("Error:") and info["label"] == NEUTRAL


def test_results_are_top_k_passages_with_ids_and_filler_makes_them_long() -> None:
    env, info = _start(top_k=5)
    obs, *_ = env.step(info["expert"][0])
    lines = obs.splitlines()
    assert 1 <= len(lines) <= 5 and all(line.startswith("[p") and "] " in line for line in lines)
    long, info = _start(top_k=5, filler=6)
    obs_long, *_ = long.step(info["expert"][0])
    assert len(obs_long) > 2 * len(obs)


def test_a_comparison_question_needs_both_lookups() -> None:
    for task in range(40):
        env, info = _start(depth=2, task=task)
        if "born earlier" in env._prompt():
            break
    else:
        pytest.fail("no comparison question in 40 tasks")
    calls = 0
    while not parse_action(info["expert"][0]).answer:
        _, _, _, _, info = env.step(info["expert"][0])
        assert info["label"] == CORRECT
        calls += 1
    assert calls == 2
    _, reward, *_ = env.step(info["expert"][0])
    assert reward == 1.0


def test_registered_with_gymnasium_and_snapshots_share_the_corpus() -> None:
    env = gymnasium.make("stepcredit/Search-v0", depth=2)
    env.reset(seed=0)
    inner = env.unwrapped
    snap = inner.snapshot()
    assert snap.state.world is inner._state.world  # the corpus and its index are never copied
    with pytest.raises(ValueError, match="top_k"):
        SearchEnv(top_k=0)
    with pytest.raises(ValueError, match="filler"):
        SearchEnv(filler=99)


@pytest.mark.parametrize("at", [0, 1])
def test_a_namesake_in_either_lookup_of_a_comparison_dooms_it(at: int) -> None:
    checked = 0
    for task in range(60):
        env, info = _start(depth=2, task=task)
        if "born earlier" not in env._prompt():
            continue
        for _ in range(at):
            _, _, _, _, info = env.step(info["expert"][0])
        mistakes = dict(info["mistakes"])
        if "wrong_bridge" not in mistakes:  # one search happened to read both people's years
            continue
        _, _, _, _, info = env.step(mistakes["wrong_bridge"])
        assert info["label"] == WRONG
        reward, done = 0.0, False
        while not done:
            _, reward, done, _, info = env.step(info["expert"][0])
        assert reward == 0.0, task
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("filler", [0, 6])
def test_the_expert_solves_every_task_at_any_top_k_and_length(top_k: int, filler: int) -> None:
    for depth in (1, 2, 3, 4):
        for task in range(15):
            env, info = _start(depth=depth, task=task, top_k=top_k, filler=filler)
            reward, done, labels = 0.0, False, []
            while not done:
                _, reward, done, truncated, info = env.step(info["expert"][0])
                labels.append(info["label"])
                done = done or truncated
            assert reward == 1.0 and set(labels) == {CORRECT}, (depth, task, labels)


def test_expert_phrasings_search_different_words() -> None:
    from stepcredit.envs.search import _phrasings, _tokens

    for rel in ("works_at", "founded_by", "born_in", "in_country", "born_year"):
        words = [frozenset(_tokens(q)) for q in _phrasings("Arlen Voss", rel)]
        assert len(words) == len(set(words)) >= 2, rel
