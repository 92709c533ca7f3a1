"""The verl-agent adapter against a re-implementation of verl-agent's GiGPO (``core_gigpo.py``:
``compute_step_discounted_returns`` + ``compute_gigpo_outcome_advantage``), written here from its
code with its per-row loops, on random one-row-per-step batches laid out as its rollout loop leaves
them; plus selections, adjust_batch copies, balance reordering, bad input and a real ``DataProto``."""

from __future__ import annotations

import difflib
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit.core.errors import RolloutError
from stepcredit.integrations.verl.agent import (
    STEP_INDEX,
    add_step_index,
    advantages_for_verl_agent,
    rows_from_verl_agent,
    step_positions,
    write_advantages,
)

EPS = 1e-6
# float32 throughout, summed in other orders; mean_std_norm divides by stds as small as ~0.05
TOL = 1e-4


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


# ----------------------------------------------------------------- verl-agent's GiGPO, loop by loop
def to_hashable(x: Any) -> Any:
    if isinstance(x, (int, float, str, bool)):
        return x
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return tuple(x.flatten())
    if isinstance(x, (list, tuple)):
        return tuple(to_hashable(e) for e in x)
    if isinstance(x, dict):
        return tuple(sorted((k, to_hashable(v)) for k, v in x.items()))
    raise TypeError(type(x))


def compute_step_discounted_returns(rewards: np.ndarray, traj_uids: np.ndarray, gamma: float) -> torch.Tensor:
    rewards = rewards.astype(np.float32)
    out = np.zeros(len(rewards), dtype=np.float32)
    for uid in dict.fromkeys(traj_uids.tolist()):
        idx = np.where(traj_uids == uid)[0]
        running = 0.0
        for t in reversed(range(len(idx))):
            running = rewards[idx[t]] + gamma * running
            out[idx[t]] = running
    return torch.tensor(out, dtype=torch.float32)


def episode_norm_reward(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    traj_index: np.ndarray,
    remove_std: bool,
    cross_steps: bool = True,
) -> torch.Tensor:
    scores = token_level_rewards.sum(dim=-1)
    id2score: dict[Any, list[torch.Tensor]] = defaultdict(list)
    seen = set()
    for i in range(scores.shape[0]):
        if (index[i], traj_index[i]) in seen:
            continue
        id2score[index[i]].append(scores[i])
        if not cross_steps:
            seen.add((index[i], traj_index[i]))
    # an episode group of one: mean 0, std 1 (its raw score)
    return _normalize(scores, index, id2score, response_mask, remove_std, lambda xs: torch.tensor(0.0))


def _normalize(
    scores: torch.Tensor,
    keys: np.ndarray,
    id2score: dict[Any, list[torch.Tensor]],
    response_mask: torch.Tensor,
    remove_std: bool,
    singleton_mean: Any,
) -> torch.Tensor:
    """verl-agent's shared tail of both normalisations: per group mean (and unbiased std), a group of
    one takes ``singleton_mean(xs)`` and std 1; scores minus mean (÷ std + ε), broadcast × mask."""
    id2mean, id2std = {}, {}
    for idx, xs in id2score.items():
        if len(xs) == 1:
            id2mean[idx], id2std[idx] = singleton_mean(xs), torch.tensor(1.0)
        else:
            id2mean[idx], id2std[idx] = torch.mean(torch.tensor(xs)), torch.std(torch.tensor([xs]))
    for i in range(scores.shape[0]):
        if remove_std:
            scores[i] = scores[i] - id2mean[keys[i]]
        else:
            scores[i] = (scores[i] - id2mean[keys[i]]) / (id2std[keys[i]] + EPS)
    return scores.unsqueeze(-1).tile([1, response_mask.shape[-1]]) * response_mask


def build_step_group(anchor_obs: np.ndarray, index: np.ndarray, similarity: float | None = None) -> np.ndarray:
    out = np.empty(len(index), dtype=object)
    for uid in dict.fromkeys(index.tolist()):
        rows = np.where(index == uid)[0]
        clusters: dict[Any, list[int]] = defaultdict(list)
        reps: list[str] = []
        for i in rows:
            if similarity is None:
                clusters[to_hashable(anchor_obs[i])].append(i)
                continue
            for rep in reps:
                if difflib.SequenceMatcher(None, anchor_obs[i], rep).ratio() >= similarity:
                    clusters[rep].append(i)
                    break
            else:
                reps.append(anchor_obs[i])
                clusters[anchor_obs[i]].append(i)
        for k, members in enumerate(clusters.values()):
            for i in members:
                out[i] = f"{uid}/{k}"
    return out


def step_norm_reward(
    step_rewards: torch.Tensor, response_mask: torch.Tensor, step_group_uids: np.ndarray, remove_std: bool
) -> torch.Tensor:
    scores = step_rewards.clone()
    id2score: dict[Any, list[torch.Tensor]] = defaultdict(list)
    for i in range(scores.shape[0]):
        id2score[step_group_uids[i]].append(scores[i])
    # a step group of one: its own value as the mean (advantage 0)
    return _normalize(scores, step_group_uids, id2score, response_mask, remove_std, lambda xs: xs[0])


def verl_agent_gigpo(
    b: dict[str, Any],
    *,
    mode: str,
    gamma: float = 0.95,
    w: float = 1.0,
    penalty: float = 0.0,
    cross_steps: bool = True,
    similarity: float | None = None,
) -> torch.Tensor:
    """ray_trainer's order: discounted returns (before adjust_batch), the episode reward on each row's
    last valid token, the invalid-action penalty on both, then compute_gigpo_outcome_advantage."""
    mask = b["response_mask"].float()
    n = mask.shape[0]
    step_rewards = compute_step_discounted_returns(b["rewards"], b["traj_uid"], gamma)
    scores = torch.zeros_like(mask)
    last = mask.sum(-1).long() - 1
    scores[torch.arange(n), last] = torch.tensor(b["episode_rewards"].astype(np.float32))
    invalid = torch.tensor(1 - b["is_action_valid"].astype(np.float32))
    scores[torch.arange(n), last] -= penalty * invalid
    step_rewards = step_rewards - penalty * invalid
    remove_std = mode == "mean_norm"
    episode = episode_norm_reward(scores, mask, b["uid"], b["traj_uid"], remove_std, cross_steps)
    groups = build_step_group(b["anchor_obs"], b["uid"], similarity)
    return episode + w * step_norm_reward(step_rewards, mask, groups, remove_std)


# ----------------------------------------------------------------------------- batches
def make_batch(
    seed: int,
    *,
    groups: int = 3,
    n: int = 4,
    max_steps: int = 5,
    width: int = 6,
    arrays: bool = False,
    invalid: float = 0.0,
) -> dict[str, Any]:
    """verl-agent's layout after gather_rollout_data: trajectory-major rows, object arrays, the first
    step of every trajectory of a group from the same reset observation, later ones from a small pool."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list[Any]] = defaultdict(list)
    masks, responses = [], []
    for g in range(groups):
        for j in range(n):
            steps = int(rng.integers(1, max_steps + 1))
            rs = np.where(rng.random(steps) < 0.3, rng.choice([0.5, 1.0, -0.1], steps), 0.0).astype(np.float32)
            rs[-1] = rng.choice([0.0, 10.0])
            for t in range(steps):
                k = 0 if t == 0 else int(rng.integers(1, 4))
                obs = np.full((2, 3), k + 10 * g, dtype=np.int64) if arrays else f"task {g}: you are in room {k}"
                length = int(rng.integers(1, width + 1))
                masks.append([1] * length + [0] * (width - length))
                responses.append(rng.integers(3, 50, width).tolist())
                cols["uid"].append(f"uid-{g}")
                cols["traj_uid"].append(f"traj-{g}-{j}")
                cols["rewards"].append(np.float32(rs[t]))
                cols["anchor_obs"].append(obs)
                cols["is_action_valid"].append(bool(rng.random() >= invalid))
                cols["episode_rewards"].append(np.float32(rs.sum()))
                cols["episode_lengths"].append(np.float32(steps))
                cols["active_masks"].append(True)
    out: dict[str, Any] = {}
    for key, values in cols.items():
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        out[key] = arr
    out["response_mask"] = torch.tensor(masks)
    out["responses"] = torch.tensor(responses)
    return out


NON_TENSOR = ("uid", "traj_uid", "rewards", "anchor_obs", "is_action_valid", "episode_rewards", "episode_lengths")


def adapter(b: dict[str, Any], recipe: Any, **kw: Any) -> torch.Tensor:
    rows = rows_from_verl_agent(
        b["response_mask"],
        b["uid"],
        b["traj_uid"],
        b["rewards"],
        anchor_obs=b["anchor_obs"],
        is_action_valid=b["is_action_valid"],
        episode_rewards=b["episode_rewards"],
        episode_lengths=b["episode_lengths"],
        **kw,
    )
    return rows.run(recipe).advantages


def gigpo(mode: str, **params: Any) -> dict[str, Any]:
    return {"credit": [{"gigpo": {"mode": mode, "gamma": 0.95, "episode_weighting": "steps", **params}}]}


def take(b: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    return {k: v[torch.as_tensor(idx)] if isinstance(v, torch.Tensor) else v[idx] for k, v in b.items()}


# ----------------------------------------------------------------------------- (1) GiGPO agrees
@pytest.mark.parametrize("mode", ["mean_norm", "mean_std_norm"])
@pytest.mark.parametrize("arrays", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_gigpo_equals_verl_agent(mode: str, arrays: bool, seed: int) -> None:
    b = make_batch(seed, arrays=arrays, invalid=0.3)
    got = adapter(b, gigpo(mode))
    want = verl_agent_gigpo(b, mode=mode)
    assert got.dtype == torch.float32 and got.shape == b["response_mask"].shape
    close(got, want)
    assert bool((got[b["response_mask"] == 0] == 0).all())


@pytest.mark.parametrize("mode", ["mean_norm", "mean_std_norm"])
def test_gigpo_step_weight_and_trajectory_weighting(mode: str) -> None:
    b = make_batch(7, groups=4, n=3)
    got = adapter(b, gigpo(mode, step_weight=0.5, episode_weighting="trajectories"))
    close(got, verl_agent_gigpo(b, mode=mode, w=0.5, cross_steps=False))


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_groups_follow_verl_agents_conventions(n: int) -> None:
    """A group of one row: mean 0 / std 1; one trajectory of several rows: all equal, so 0."""
    b = make_batch(n, groups=4, n=n, max_steps=3)
    for mode in ("mean_norm", "mean_std_norm"):
        close(adapter(b, gigpo(mode)), verl_agent_gigpo(b, mode=mode))
        close(
            adapter(b, gigpo(mode, episode_weighting="trajectories")), verl_agent_gigpo(b, mode=mode, cross_steps=False)
        )


def test_similarity_groups_anchor_texts_as_verl_agent() -> None:
    b = make_batch(3, groups=2, n=5)
    b["anchor_obs"] = np.array([f"{a} {'x' * (len(a) % 3)}" for a in b["anchor_obs"]], dtype=object)
    for threshold in (0.9, 0.97):
        got = adapter(b, gigpo("mean_std_norm", similarity=threshold))
        want = verl_agent_gigpo(b, mode="mean_std_norm", similarity=threshold)
        close(got, want)


def test_similarity_on_array_anchors_groups_exactly() -> None:
    b = make_batch(8, arrays=True)
    close(adapter(b, gigpo("mean_norm", similarity=0.9)), verl_agent_gigpo(b, mode="mean_norm"))


def test_tool_calls_inside_steps() -> None:
    b = make_batch(2, width=8)
    responses = b["responses"].clone()
    responses[::3, 0], responses[::3, 2] = 1, 2  # <call> x </call> opening every third row's action
    b["response_mask"][::3, :3] = 1
    rows = rows_from_verl_agent(
        b["response_mask"],
        b["uid"],
        b["traj_uid"],
        b["rewards"],
        anchor_obs=b["anchor_obs"],
        responses=responses,
        tool_call=([1], [2]),
    )
    assert rows.rollouts.num_calls == len(range(0, len(b["uid"]), 3))
    out = rows.run({"credit": [{"gigpo": {}}, {"action_anchor": {}}]})
    assert out.advantages.shape == b["response_mask"].shape
    assert bool((out.advantages[b["response_mask"] == 0] == 0).all())
    close(rows.run(gigpo("mean_norm")).advantages, verl_agent_gigpo(b, mode="mean_norm"))


def test_penalty_is_exact_when_every_action_is_valid() -> None:
    b = make_batch(11)
    got = adapter(b, gigpo("mean_std_norm"), invalid_action_penalty=0.1)
    close(got, verl_agent_gigpo(b, mode="mean_std_norm", penalty=0.1))


@pytest.mark.parametrize("mode", ["mean_norm", "mean_std_norm"])
def test_penalty_is_a_shaping_reward_at_the_invalid_step(mode: str) -> None:
    """Documented approximation: penalty c ≡ verl-agent on rewards r_t − c·(1 − valid_t) without one
    (and not verl-agent's row-local penalty, which differs once some action is invalid)."""
    b = make_batch(5, invalid=0.4)
    got = adapter(b, gigpo(mode), invalid_action_penalty=0.1)
    shaped = dict(b)
    invalid = 1 - b["is_action_valid"].astype(np.float64)
    shaped["rewards"] = (b["rewards"].astype(np.float64) - 0.1 * invalid).astype(np.float32)
    sums: dict[str, float] = defaultdict(float)
    for t, r in zip(b["traj_uid"], shaped["rewards"], strict=True):
        sums[t] += float(r)
    shaped["episode_rewards"] = np.array([sums[t] for t in b["traj_uid"]], dtype=np.float64)
    close(got, verl_agent_gigpo(shaped, mode=mode))
    assert not torch.allclose(got, verl_agent_gigpo(b, mode=mode, penalty=0.1), atol=1e-3)


def test_outcome_is_the_last_steps_reward() -> None:
    b = make_batch(2)
    rows = rows_from_verl_agent(b["response_mask"], b["uid"], b["traj_uid"], b["rewards"])
    r = rows.rollouts
    last = r.step_offsets[1:] - 1
    final = {t: float(x) for t, x in zip(b["traj_uid"], b["rewards"], strict=True)}  # the last row wins
    assert r.outcome.tolist() == [final[str(t)] for t in r.texts.ids.to_pylist()]
    assert bool((r.reward[last] == 0).all())
    totals = (r.outcome + torch.zeros(r.num_trajectories).index_add_(0, r.step_traj, r.reward)).tolist()
    want = {t: float(e) for t, e in zip(b["traj_uid"], b["episode_rewards"], strict=True)}
    assert totals == pytest.approx([want[str(t)] for t in r.texts.ids.to_pylist()])


# ----------------------------------------------------------------------------- (2) selections
def test_selection_zeroes_dropped_groups_and_returns_every_row() -> None:
    b = make_batch(4, groups=3, n=4)
    flat = b["uid"] == "uid-1"  # every trajectory of group 1 ends with the same env reward, the others' differ
    last = np.flatnonzero(np.r_[b["traj_uid"][1:] != b["traj_uid"][:-1], True])
    b["rewards"][last] = [np.float32(10.0 if flat[i] or k % 2 else 0.0) for k, i in enumerate(last)]
    b["rewards"] = b["rewards"].astype(np.float32).astype(object)
    sums: dict[str, float] = defaultdict(float)
    for t, r in zip(b["traj_uid"], b["rewards"], strict=True):
        sums[t] += float(r)
    b["episode_rewards"] = np.array([np.float32(sums[t]) for t in b["traj_uid"]], dtype=object)
    recipe = {"selection": [{"zero_variance_filter": {}}], **gigpo("mean_norm")}
    rows = rows_from_verl_agent(
        b["response_mask"],
        b["uid"],
        b["traj_uid"],
        b["rewards"],
        anchor_obs=b["anchor_obs"],
        episode_rewards=b["episode_rewards"],
    )
    out = rows.run(recipe)
    assert out.advantages.shape == b["response_mask"].shape
    assert out.kept.tolist() == (~flat).tolist()
    assert bool((out.advantages[torch.as_tensor(flat)] == 0).all())
    rest = take(b, np.flatnonzero(~flat))
    close(out.advantages[torch.as_tensor(~flat)], verl_agent_gigpo(rest, mode="mean_norm"))


# ----------------------------------------------------------------------------- (3) adjust_batch / balance
def test_copies_get_their_originals_advantage_after_adjust_and_balance() -> None:
    b = make_batch(6)
    n = len(b["uid"])
    b[STEP_INDEX] = step_positions(b["traj_uid"])
    base = adapter(b, gigpo("mean_std_norm"), step_index=b[STEP_INDEX])
    rng = np.random.default_rng(0)
    source = np.r_[np.arange(n), rng.choice(n, 7)]  # adjust_batch "copy": random rows appended
    source = source[rng.permutation(source.size)]  # _balance_batch: rows reordered
    moved = take(b, source)
    got = adapter(moved, gigpo("mean_std_norm"), step_index=moved[STEP_INDEX])
    torch.testing.assert_close(got, base[torch.as_tensor(source)], rtol=0, atol=0)
    close(base, verl_agent_gigpo(b, mode="mean_std_norm"))


# ----------------------------------------------------------------------------- (4) bad input
def call(b: dict[str, Any], **kw: Any) -> Any:
    args = {k: b[k] for k in ("response_mask", "uid", "traj_uid", "rewards")}
    extra = {k: b[k] for k in ("anchor_obs", "is_action_valid", "episode_rewards", "episode_lengths")}
    return rows_from_verl_agent(**{**args, **extra, **kw})


def test_wrong_lengths_are_named() -> None:
    b = make_batch(0)
    for field in ("uid", "traj_uid", "rewards", "anchor_obs", "is_action_valid", "episode_rewards"):
        with pytest.raises(RolloutError, match="one per row") as err:
            call(b, **{field: b[field][:-1]})
        assert err.value.field == field


def test_a_row_with_two_runs_or_none_is_an_error() -> None:
    b = make_batch(0)
    mask = b["response_mask"].clone()
    mask[3] = torch.tensor([1, 0, 1, 0, 0, 0])
    with pytest.raises(RolloutError, match=r"row 3 has 2 separate runs") as err:
        call(b, response_mask=mask)
    assert err.value.field == "response_mask" and err.value.trajectory == b["traj_uid"][3]
    mask[3] = 0
    with pytest.raises(RolloutError, match=r"row 3 has no model tokens") as err:
        call(b, response_mask=mask)
    assert err.value.trajectory == b["traj_uid"][3]


def test_lying_episode_rewards_name_the_trajectory() -> None:
    b = make_batch(1)
    lies = b["episode_rewards"].copy()
    lies[b["traj_uid"] == "traj-2-1"] = np.float32(123.0)
    with pytest.raises(RolloutError, match="episode_rewards 123") as err:
        call(b, episode_rewards=lies)
    assert err.value.trajectory == "traj-2-1" and err.value.field == "episode_rewards"
    assert "traj-2-1" in str(err.value)


def test_copies_without_step_index_are_caught_by_episode_lengths() -> None:
    b = make_batch(1)
    b = take(b, np.r_[np.arange(len(b["uid"])), 0])
    b["rewards"][-1] = np.float32(0.0)
    b["rewards"][0] = np.float32(0.0)  # keep episode_rewards true, so the lengths must catch it
    b["episode_rewards"][b["traj_uid"] == b["traj_uid"][0]] = np.float32(
        sum(float(r) for r, t in zip(b["rewards"][:-1], b["traj_uid"][:-1], strict=True) if t == b["traj_uid"][0])
    )
    with pytest.raises(RolloutError, match="give step_index") as err:
        call(b)
    assert err.value.field == "episode_lengths"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewards(bad: float) -> None:
    b = make_batch(0)
    b["rewards"][2] = bad
    with pytest.raises(RolloutError, match="finite rewards") as err:
        call(b)
    assert err.value.field == "rewards" and err.value.trajectory == b["traj_uid"][2]


def test_other_bad_input() -> None:
    b = make_batch(0)
    uid = b["uid"].copy()
    uid[1] = "uid-other"
    with pytest.raises(RolloutError, match="must share a uid") as err:
        call(b, uid=uid)
    assert err.value.field == "uid"
    valid = b["is_action_valid"].copy()
    valid[0] = 0.5
    with pytest.raises(RolloutError, match="expected booleans"):
        call(b, is_action_valid=valid)
    with pytest.raises(RolloutError, match="is_action_valid is not given"):
        call(b, is_action_valid=None, invalid_action_penalty=0.1)
    with pytest.raises(RolloutError, match="integers") as err:
        call(b, step_index=np.full(len(uid), 0.5))
    assert err.value.field == "step_index"
    anchors = b["anchor_obs"].copy()
    anchors[0] = {1}  # a set: not comparable the way verl-agent's to_hashable compares
    with pytest.raises(RolloutError, match="cannot be compared"):
        call(b, anchor_obs=anchors)
    # two different steps under one (traj_uid, step_index)
    with pytest.raises(RolloutError, match="must be copies of one step") as err:
        call(b, step_index=np.zeros(len(uid), dtype=np.int64))
    assert err.value.trajectory == b["traj_uid"][1]


def test_missing_field_in_a_dataproto() -> None:
    protocol = pytest.importorskip("verl.protocol")
    b = make_batch(0)
    data = protocol.DataProto.from_dict(
        tensors={"response_mask": b["response_mask"]}, non_tensors={k: b[k] for k in ("uid", "rewards")}
    )
    with pytest.raises(RolloutError, match="non_tensor_batch\\['traj_uid'\\]") as err:
        advantages_for_verl_agent(data, gigpo("mean_norm"))
    assert err.value.field == "traj_uid"


# ----------------------------------------------------------------------------- (5) a real DataProto
def test_round_trip_through_a_dataproto() -> None:
    protocol = pytest.importorskip("verl.protocol")
    b = make_batch(9, arrays=True)
    n, width = b["response_mask"].shape
    prompts = torch.ones(n, 3, dtype=torch.long)
    data = protocol.DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": b["responses"],
            "attention_mask": torch.cat([prompts, b["response_mask"]], 1),  # no response_mask yet
        },
        non_tensors={k: b[k] for k in NON_TENSOR},
    )
    add_step_index(data)  # right after the rollout loop
    # adjust_batch("copy") then _balance_batch
    rng = np.random.default_rng(1)
    extra = data.select_idxs(torch.as_tensor(rng.choice(n, 5)))
    data = protocol.DataProto.concat([data, extra])
    data.reorder(torch.as_tensor(rng.permutation(len(data))))
    data.batch["response_mask"] = data.batch["attention_mask"][:, -width:]

    credit = advantages_for_verl_agent(data, gigpo("mean_std_norm"))
    write_advantages(data, credit)
    adv = data.batch["advantages"]
    assert adv.dtype == torch.float32 and adv.shape == (len(data), width)
    assert data.batch["returns"] is adv or torch.equal(data.batch["returns"], adv)
    # each row's advantage is verl-agent's for the (traj_uid, step) it holds, on the original batch
    want = verl_agent_gigpo(b, mode="mean_std_norm")
    at = {(t, int(s)): i for i, (t, s) in enumerate(zip(b["traj_uid"], step_positions(b["traj_uid"]), strict=True))}
    src = [
        at[(t, int(s))]
        for t, s in zip(data.non_tensor_batch["traj_uid"], data.non_tensor_batch[STEP_INDEX], strict=True)
    ]
    close(adv, want[torch.as_tensor(src)])
    assert 0.0 < credit.metrics["stepcredit/kept_fraction"] <= 1.0
    with pytest.raises(ValueError, match="do not fit"):
        write_advantages(data, credit.advantages[:-1])


# ----------------------------------------------------------------------------- permutations
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_permuting_rows_permutes_advantages(seed: int, data: st.DataObject) -> None:
    b = make_batch(seed, groups=2, n=3, max_steps=4, arrays=seed % 2 == 1, invalid=0.2)
    b[STEP_INDEX] = step_positions(b["traj_uid"])
    n = len(b["uid"])
    perm = np.asarray(data.draw(st.permutations(range(n))))
    recipe = gigpo("mean_std_norm")
    base = adapter(b, recipe, step_index=b[STEP_INDEX], invalid_action_penalty=0.1)
    moved = take(b, perm)
    got = adapter(moved, recipe, step_index=moved[STEP_INDEX], invalid_action_penalty=0.1)
    torch.testing.assert_close(got, base[torch.as_tensor(perm)], rtol=0, atol=1e-6)
