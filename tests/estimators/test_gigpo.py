"""GiGPO against a slow, obviously-correct loop oracle written from the description of verl-agent's
``compute_gigpo_outcome_advantage`` (shared/research/anchors.md §3), plus hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stepcredit import Rollouts, grpo
from stepcredit.core import Texts, observation_states
from stepcredit.estimators import gigpo
from tests.support.estimator_oracles import gigpo_oracle


@st.composite
def anchored_batches(draw):
    """Random groups of trajectories whose steps revisit a few states; dyadic rewards."""
    n = draw(st.integers(1, 14))
    groups = sorted(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    dense = {g: k for k, g in enumerate(dict.fromkeys(groups))}
    lengths = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    s = sum(lengths)
    outcome = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=n, max_size=n))
    reward = draw(st.lists(st.sampled_from([0.0, 0.0, -1.0, 0.25]), min_size=s, max_size=s))
    state = draw(st.lists(st.integers(0, 4), min_size=s, max_size=s))
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return Rollouts(
        group=[dense[g] for g in groups],
        outcome=outcome,
        step_offsets=offsets,
        reward=reward,
        state=state,
        texts=Texts.create(n, len(dense), s, 0),
    )


@settings(max_examples=150, deadline=None)
@given(
    anchored_batches(),
    st.sampled_from(["mean_norm", "mean_std_norm"]),
    st.sampled_from(["steps", "trajectories"]),
    st.sampled_from([0.5, 1.0]),
    st.sampled_from([1.0, 0.5]),
)
def test_gigpo_matches_loop_oracle(r, mode, weighting, gamma, w):
    got = gigpo(r, step_weight=w, mode=mode, gamma=gamma, episode_weighting=weighting).per_step(r)
    want = gigpo_oracle(r, step_weight=w, mode=mode, gamma=gamma, eps=1e-6, episode_weighting=weighting)
    assert torch.allclose(got.double(), want, atol=1e-5), (got, want)


def test_gigpo_by_hand():
    # one task, two trajectories that both start from state 7; trajectory 0 succeeds after 2 steps
    r = Rollouts(group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 2, 3], state=[7, 8, 7])
    credit = gigpo(r, gamma=0.5, episode_weighting="trajectories")
    # A_E = R − 0.5; returns: traj0 [0.5, 1], traj1 [0]; state 7 holds 0.5 and 0 → mean 0.25
    assert credit.per_step(r).tolist() == pytest.approx([0.5 + 0.25, 0.5 + 0.0, -0.5 - 0.25])
    # steps weighting: the 2-step trajectory counts twice → mean R = 2/3
    steps = gigpo(r, gamma=0.5).trajectory.tolist()
    assert steps == pytest.approx([1 / 3, -2 / 3])


def test_gigpo_is_grpo_when_states_are_distinct():
    r = Rollouts(group=[0, 0, 0, 1], outcome=[1.0, 0.0, 0.0, 1.0], step_offsets=[0, 2, 3, 5, 6])
    for mode, norm in (("mean_norm", "mean"), ("mean_std_norm", "std")):
        credit = gigpo(r, mode=mode, episode_weighting="trajectories")
        assert torch.equal(credit.per_step(r), grpo(r, norm=norm).per_step(r))


def test_gigpo_similarity_groups_near_identical_observations():
    texts = Texts.create(
        3,
        1,
        3,
        0,
        prompt=["You are in room 12 with a red door.", "You are in room 12 with a red door!", "Elsewhere."],
    )
    r = Rollouts(group=[0, 0, 0], outcome=[1.0, 0.0, 0.0], step_offsets=[0, 1, 2, 3], texts=texts)
    exact = gigpo(r, episode_weighting="trajectories").step
    similar = gigpo(r, episode_weighting="trajectories", similarity=0.9).step
    assert exact.tolist() == [0.0, 0.0, 0.0]  # all states distinct: no step signal
    assert similar[0] > 0 > similar[1] and similar[2] == 0.0  # the two rooms are one anchor state


def test_gigpo_bad_arguments():
    r = Rollouts(group=[0], outcome=[1.0], step_offsets=[0, 1])
    with pytest.raises(ValueError, match="mode"):
        gigpo(r, mode="std")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="episode_weighting"):
        gigpo(r, episode_weighting="tokens")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="similarity"):
        gigpo(r, similarity=1.5)


@settings(max_examples=40, deadline=None)
@given(anchored_batches(), st.sampled_from(["steps", "trajectories"]))
def test_verl_agent_style_reference_agrees(r, weighting):
    """(verl-agent has one row per step, so a trajectory without steps cannot exist there.)"""
    from tests.support.estimator_oracles import gigpo_verl_agent_style

    assume(bool((r.steps_per_trajectory > 0).all()))
    kw = dict(step_weight=1.0, mode="mean_norm", gamma=0.5, eps=1e-6, episode_weighting=weighting)
    assert torch.allclose(gigpo_verl_agent_style(r, **kw), gigpo_oracle(r, **kw), atol=1e-6)


def verl_agent_clusters(texts: list[str], threshold: float) -> list[int]:
    """verl-agent's similarity grouping (``are_similar`` + greedy first-fit against each cluster's
    first member), written as its loops: the cluster of every text, in order."""
    from difflib import SequenceMatcher

    clusters: list[list[str]] = []
    out = []
    for text in texts:
        for k, cluster in enumerate(clusters):
            if SequenceMatcher(None, text, cluster[0]).ratio() >= threshold:
                cluster.append(text)
                out.append(k)
                break
        else:
            clusters.append([text])
            out.append(len(clusters) - 1)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_similarity_grouping_agrees_with_verl_agent_on_long_observations(seed):
    from stepcredit.core import observation_states

    rng = np.random.default_rng(seed)
    things = [
        f"a {k} {i}" for k in ("cabinet", "drawer", "shelf", "fridge", "sinkbasin", "stoveburner") for i in (1, 2, 3)
    ]
    rooms = []
    for _ in range(3):  # a few rooms, each observed with small changes (an item more or less, a word changed)
        base = list(rng.choice(things, size=int(rng.integers(12, 18)), replace=False))
        for _ in range(4):
            seen = list(base)
            if rng.random() < 0.5:
                seen.insert(int(rng.integers(len(seen))), str(rng.choice(things)))
            if rng.random() < 0.5:
                seen.pop(int(rng.integers(len(seen))))
            rooms.append(
                "You are in the middle of a room. Looking quickly around you, you see " + ", ".join(seen) + "."
            )
    order = rng.permutation(len(rooms))
    texts = [rooms[i] for i in order]
    assert min(map(len, texts)) >= 200  # long enough for difflib's autojunk to matter
    n = len(texts)
    r = Rollouts(
        group=[0] * n,
        outcome=rng.integers(0, 2, n).astype(float),
        step_offsets=list(range(n + 1)),
        texts=Texts.create(n, 1, n, 0, prompt=texts),
    )
    for threshold in (0.8, 0.9, 0.95):
        keys = observation_states(r, similarity=threshold).tolist()
        want = verl_agent_clusters(texts, threshold)
        same_ours = [[keys[i] == keys[j] for j in range(n)] for i in range(n)]
        same_ref = [[want[i] == want[j] for j in range(n)] for i in range(n)]
        assert same_ours == same_ref, threshold


# ------------------------------------------------------------------- hostile input
def test_gigpo_similarity_matches_verl_agent_on_long_observations():
    # verl-agent's are_similar(new, representative): difflib.SequenceMatcher(None, a, b).ratio() with
    # Python's default autojunk, which treats characters frequent in b (len >= 200) as junk
    import difflib

    reset = (
        "-= Welcome to TextWorld, ALFRED! =- You are in the middle of a room. Looking quickly around you, you see "
        "a cabinet 4, a cabinet 3, a cabinet 2, a cabinet 1, a coffeemachine 1, a countertop 1, a diningtable 3, "
        "a diningtable 2, a diningtable 1, a drawer 1, a fridge 1, a garbagecan 1, a microwave 1, a sidetable 1, "
        "a sinkbasin 1, a stoveburner 4, a stoveburner 3, a stoveburner 2, a stoveburner 1, and a toaster 1. "
        "Your task is to: put a clean lettuce in diningtable."
    )
    other = reset.replace("a fridge 1, ", "a fridge 1, a fridge 2, ")
    reference = difflib.SequenceMatcher(None, other, reset).ratio()
    assert reference < 0.9 < difflib.SequenceMatcher(None, other, reset, autojunk=False).ratio()
    r = Rollouts(
        group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 1, 2], texts=Texts.create(2, 1, 2, 0, prompt=[reset, other])
    )
    keys = observation_states(r, similarity=0.9)
    assert keys[0] != keys[1]  # kept apart, as verl-agent does
    assert observation_states(r, similarity=0.5)[1] == keys[0]  # reference ratio 0.59 >= 0.5: merged
