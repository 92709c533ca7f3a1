"""verl-agent (GiGPO's trainer) adapter: its one-row-per-step batch → ``TrainerRows`` → any recipe →
``(N, R)`` advantages back on the rows, so verl-agent users switch estimators without reshaping.

**verl-agent's layout.** After its multi-turn rollout loop a batch holds *one row per (trajectory,
step)*: ``responses`` / ``response_mask`` ``(N, R)`` are the step's action tokens (the observation
sits in the row's prompt, so the mask is one run of ones), and ``non_tensor_batch`` holds object
arrays ``[N]``: ``uid`` (the task group, shared by ``env.rollout.n`` environments), ``traj_uid`` (the
trajectory), ``rewards`` (the env reward ``r_t`` of this step), ``is_action_valid``, ``anchor_obs``
(the observation the step acted on: text, or an image / grid ndarray), and per-trajectory copies of
``episode_rewards`` (``Σ_t r_t``) and ``episode_lengths``. There is no step index: step order is row
order, which holds only until ``adjust_batch`` appends random duplicate rows and ``_balance_batch``
reorders them (``add_step_index`` right after the rollout loop records it).

**The mapping.**

* trajectory = ``traj_uid``; group = ``uid``; step = the row (its run of mask ones), steps ordered by
  ``step_index`` (default: row order);
* rewards: the env reward of a trajectory's *last* step is its ``outcome``; the env rewards of the
  other steps, and ``− invalid_action_penalty · (1 − is_action_valid)`` at every step, are the
  steps' intermediate ``reward``. Return-based estimators (``gigpo``, ``ms_grpo``, ``per_turn``) only
  use ``outcome + Σ reward`` and the discounted ``G_t`` (the outcome is the last step's reward), so they
  see exactly verl-agent's ``Σ_t r_t`` and ``Σ_k γ^k r_{t+k}``; outcome-only estimators and
  selections (``grpo``, ``rloo``, ``zero_variance_filter``, …) see the final env reward — the success
  signal in alfworld / webshop / search, whose rewards come only at the end. (An outcome of 0 with
  every ``r_t`` intermediate would give those all-zero credit and drop every group.) ``episode_rewards``
  is checked, not used: it must equal ``Σ_t rewards`` of its trajectory;
* ``anchor_obs`` → ``state``: equal observations of one group are one decision point (strings by
  value; ndarrays by dtype and flattened bytes, as ``to_hashable``'s flattened tuple; lists / tuples /
  dicts recursively). Anchors are also written as the steps' observation texts, so ``gigpo``'s
  ``similarity`` (verl-agent's ``enable_similarity``, text only) compares them: text as it is, other
  anchors as a digest (they group exactly). A step after one with tool calls (``tool_call``) reads its
  anchor behind one newline per call (``anchor_observations`` puts call results first);
* rows ``adjust_batch`` duplicated (same ``traj_uid`` and ``step_index``) are one step: the first
  occurrence is used and the copies get its advantage. Only possible with ``step_index``; without it
  a copy is another step (``episode_lengths``, when given, catches that).

**What is reproduced.** On a batch as the rollout loop leaves it (or any reordering / duplication
of it, given ``step_index``), ``gigpo`` with ``episode_weighting="steps"`` equals verl-agent's
``compute_step_discounted_returns`` + ``compute_gigpo_outcome_advantage`` (``mean_norm`` /
``mean_std_norm``, ``step_advantage_w``, ε = 1e-6, singleton conventions); ``"trajectories"`` is its
``compute_mean_std_cross_steps=False``. Not reproduced:

* the invalid-action penalty is **approximated**: verl-agent subtracts ``coef`` from one row's episode
  score and from that row's ``G_t`` after discounting, so a trajectory's rows get different episode
  scores — which stepcredit's per-trajectory episode term cannot hold. Here the penalty is a shaping
  reward at the invalid step: the episode return drops by ``coef`` per invalid step (on every step's
  episode term) and ``G_t`` carries the discounted penalties of later steps. Exact when
  ``coef = 0`` or every action is valid;
* adjust_batch's duplicates count in verl-agent's group statistics (a padding artefact); here they
  do not, so the result is verl-agent's on the batch before duplication;
* KL-in-reward (``algorithm.use_kl_in_reward``) and ``normalize_by_length`` of the episode reward
  manager act on ``token_level_rewards``, which this adapter does not read.

Nothing here imports verl; ``advantages_for_verl_agent`` / ``write_advantages`` take a ``DataProto``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from stepcredit.core import Rollouts
from stepcredit.core.errors import RolloutError, show
from stepcredit.integrations.calls import CallIdentity, Decode, name_calls
from stepcredit.integrations.rows import RowCredit, TrainerRows
from stepcredit.io.tensors import dense_groups, from_trainer_tensors
from stepcredit.recipe import Recipe

__all__ = [
    "STEP_INDEX",
    "VerlAgentRows",
    "add_step_index",
    "advantages_for_verl_agent",
    "rows_from_verl_agent",
    "step_positions",
    "write_advantages",
]

STEP_INDEX = "step_index"
"""The ``non_tensor_batch`` key ``add_step_index`` writes and ``advantages_for_verl_agent`` reads."""

Column = Sequence[Any] | np.ndarray | Tensor
RecipeSpec = Recipe | str | Path | Mapping[str, Any]  # what ``Recipe.load`` takes
Where = Callable[[int], dict[str, str]]  # row -> the trajectory / group a message names


class DataProtoLike(Protocol):
    """What is used of verl's ``DataProto``: a TensorDict ``batch`` and a dict of ``[N]`` arrays."""

    batch: Any
    non_tensor_batch: dict[str, np.ndarray]


@dataclass(frozen=True)
class VerlAgentRows(TrainerRows):
    """A verl-agent batch as trajectories. ``rows`` / ``rollouts`` hold its *distinct* steps;
    ``distinct_row [N]`` gives, for every input row, its distinct row (``None``: no row repeats
    another), and ``run`` returns advantages for all ``N`` input rows, copies getting their original's."""

    distinct_row: Tensor | None = None

    def run(self, recipe: RecipeSpec) -> RowCredit:
        out = super().run(Recipe.load(recipe))
        if self.distinct_row is None:
            return out
        return RowCredit(out.advantages[self.distinct_row], out.kept[self.distinct_row], out.result, out.metrics)


def _array(values: Column, n: int, field: str) -> np.ndarray:
    """``values`` as a 1-D numpy array of ``n`` entries (object arrays stay object arrays)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)):
        raise RolloutError(f"expected {n} values (one per row), got a single {type(values).__name__}", field=field)
    arr = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=object)
    if arr.ndim == 0 or arr.shape[0] != n:
        raise RolloutError(f"expected {n} values (one per row), got shape {arr.shape}", field=field)
    return arr


def _numbers(values: Column, n: int, field: str) -> np.ndarray:
    """``[n]`` float64 from a numeric column (verl-agent's are object arrays of numpy scalars)."""
    arr = _array(values, n, field)
    if arr.ndim != 1:
        raise RolloutError(f"expected one number per row, got shape {arr.shape}", field=field)
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((i for i, v in enumerate(arr) if not isinstance(v, (int, float, np.number))), 0)
        raise RolloutError(f"expected numbers, got {show(arr[bad])} at row {bad}", field=field) from None


def step_positions(traj_uid: Column) -> np.ndarray:
    """``[N]`` int64: each row's position among its trajectory's rows, in row order — the step index
    verl-agent's rows imply right after its rollout loop (and only then)."""
    traj, _ = dense_groups(traj_uid.detach().cpu() if isinstance(traj_uid, Tensor) else np.asarray(traj_uid))
    t = traj.numpy()
    order = np.argsort(t, kind="stable")
    counts = np.bincount(t, minlength=int(t.max()) + 1 if t.size else 0)
    starts = np.cumsum(counts) - counts
    pos = np.empty(t.size, dtype=np.int64)
    pos[order] = np.arange(t.size) - np.repeat(starts, counts)
    return pos


def add_step_index(data: DataProtoLike, key: str = STEP_INDEX) -> np.ndarray:
    """Record each row's step index (``step_positions`` of ``traj_uid``) as ``non_tensor_batch[key]``.

    Call it right after verl-agent's ``multi_turn_loop`` returns — before ``adjust_batch`` duplicates
    and ``_balance_batch`` reorders rows; both carry the column along, so ``advantages_for_verl_agent``
    can still order steps and recognise copies afterwards."""
    if "traj_uid" not in data.non_tensor_batch:
        raise RolloutError("the batch has no non_tensor_batch['traj_uid']", field="traj_uid")
    pos = step_positions(data.non_tensor_batch["traj_uid"])
    data.non_tensor_batch[key] = pos
    return pos


def _hashable(obs: Any) -> Hashable:
    """A key equal for equal observations, as verl-agent's ``to_hashable``; arrays by dtype and
    flattened bytes (its flattened tuple, without the per-element Python objects)."""
    if isinstance(obs, np.ndarray):
        if obs.dtype == object:
            return ("ndarray", tuple(_hashable(v) for v in obs.ravel()))
        return ("ndarray", obs.dtype.str, np.ascontiguousarray(obs).tobytes())
    if isinstance(obs, np.generic):
        return obs.item()  # type: ignore[no-any-return]
    if isinstance(obs, dict):
        return ("dict", tuple(sorted((str(k), _hashable(v)) for k, v in obs.items())))
    if isinstance(obs, (list, tuple)):
        return ("list", tuple(_hashable(v) for v in obs))
    if isinstance(obs, Tensor):
        return _hashable(obs.detach().cpu().numpy())
    hash(obs)  # raises TypeError for anything else unhashable
    return obs  # type: ignore[no-any-return]


def _states(anchor_obs: np.ndarray, where: Where) -> np.ndarray:
    """``[N]`` int64 dense key of each row's anchor observation (host-side: the column is objects)."""
    index: dict[Hashable, int] = {}
    out = np.empty(anchor_obs.shape[0], dtype=np.int64)
    for i in range(anchor_obs.shape[0]):
        try:
            key = _hashable(anchor_obs[i])
        except TypeError:
            raise RolloutError(
                f"row {i}: anchor observation of type {type(anchor_obs[i]).__name__} cannot be compared "
                "(expected text, an ndarray, or lists / dicts of them)",
                field="anchor_obs",
                **where(i),
            ) from None
        out[i] = index.setdefault(key, len(index))
    return out


def _integers(values: Column, n: int, field: str) -> np.ndarray:
    arr = _array(values, n, field)
    if arr.dtype == bool or (arr.dtype == object and any(isinstance(v, (bool, np.bool_)) for v in arr)):
        raise RolloutError("expected integer step indices, got booleans", field=field)
    f = _numbers(arr, n, field)
    bad = np.flatnonzero(~np.isfinite(f) | (f != np.round(f)))
    if bad.size:
        raise RolloutError(f"expected integers, got {show(arr[bad[0]])} at row {int(bad[0])}", field=field)
    return f.astype(np.int64)


def rows_from_verl_agent(
    response_mask: Tensor,
    uid: Column,
    traj_uid: Column,
    rewards: Column,
    *,
    step_index: Column | None = None,
    anchor_obs: Column | None = None,
    is_action_valid: Column | None = None,
    invalid_action_penalty: float = 0.0,
    episode_rewards: Column | None = None,
    episode_lengths: Column | None = None,
    responses: Tensor | None = None,
    tool_call: tuple[Sequence[int], Sequence[int]] | None = None,
    call_identity: CallIdentity = "tokens",
    decode: Decode | None = None,
    markers: Sequence[str] = (),
) -> VerlAgentRows:
    """verl-agent's step rows as trajectories (see the module docstring for the mapping).

    Args:
        response_mask: ``(N, R)``; each row must hold exactly one step, one run of ones.
        uid, traj_uid: ``[N]`` group and trajectory key of each row (any hashables; verl-agent's uuid
            strings). Rows of one trajectory must share a uid.
        rewards: ``[N]`` env reward ``r_t`` of each step (finite).
        step_index: ``[N]`` integer position of each row in its trajectory (``add_step_index``);
            ``None``: row order — what verl-agent guarantees only *before* ``adjust_batch`` and
            ``_balance_batch``. With it, rows of equal ``(traj_uid, step_index)`` are one step
            (``adjust_batch``'s copies): they must be identical, and the copies get the first's credit.
        anchor_obs: ``[N]`` observation each step acted on (text, ndarray, or lists / dicts of them);
            equal ones within a group are one decision point. ``None``: every step its own.
        is_action_valid: ``[N]`` bools (``None``: all valid, verl-agent's default for envs that do not
            report validity).
        invalid_action_penalty: verl-agent's ``invalid_action_penalty_coef`` (0 when its
            ``use_invalid_action_penalty`` is off); subtracted from the invalid step's reward.
        episode_rewards, episode_lengths: ``[N]`` verl-agent's per-trajectory copies, checked against
            the sum of the trajectory's rewards and its number of distinct steps.
        responses, tool_call, call_identity, decode, markers: tool-call spans as in
            ``stepcredit.integrations.verl.estimators.rows_from_verl``.

    Returns a ``VerlAgentRows`` whose ``run(recipe)`` gives ``(N, R)`` advantages for every input row.
    Errors name the row, its trajectory and group, and the field.
    """
    if not isinstance(response_mask, Tensor) or response_mask.dim() != 2:
        shape = tuple(response_mask.shape) if isinstance(response_mask, Tensor) else type(response_mask).__name__
        raise RolloutError(f"expected a (N, R) tensor, got {shape}", field="response_mask")
    n = response_mask.shape[0]
    if n == 0:
        raise RolloutError("the batch has no rows", field="response_mask")
    traj_arr, uid_arr = _array(traj_uid, n, "traj_uid"), _array(uid, n, "uid")
    traj_t, traj_names = dense_groups(traj_arr)
    group_t, group_names = dense_groups(uid_arr)
    traj, group = traj_t.numpy(), group_t.numpy()

    def where(i: int) -> dict[str, str]:
        return {"trajectory": traj_names[traj[i]], "group": group_names[group[i]]}

    # every row of one trajectory in one group
    first = np.unique(traj, return_index=True)[1]  # dense ids are in order of first appearance
    mixed = np.flatnonzero(group != group[first][traj])
    if mixed.size:
        i = int(mixed[0])
        raise RolloutError(
            f"row {i} has uid {group_names[group[i]]!r}, but row {int(first[traj[i]])} of the same trajectory "
            f"has {group_names[group[first[traj[i]]]]!r}: a trajectory's rows must share a uid",
            trajectory=traj_names[traj[i]],
            field="uid",
        )

    # every row exactly one step
    mask = response_mask != 0
    runs = (mask[:, :1].sum(1) + (mask[:, 1:] & ~mask[:, :-1]).sum(1)).cpu().numpy()
    bad = np.flatnonzero(runs != 1)
    if bad.size:
        i = int(bad[0])
        what = (
            "has no model tokens (response_mask is all 0)"
            if runs[i] == 0
            else f"has {int(runs[i])} separate runs of response_mask ones"
        )
        raise RolloutError(
            f"row {i} {what}: a verl-agent row is exactly one step, one run of action tokens",
            field="response_mask",
            **where(i),
        )

    r = _numbers(rewards, n, "rewards")
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        i = int(bad[0])
        raise RolloutError(f"expected finite rewards, got {r[i]} at row {i}", field="rewards", **where(i))
    penalty = float(invalid_action_penalty)
    if not np.isfinite(penalty):
        raise ValueError(f"invalid_action_penalty must be finite, got {invalid_action_penalty}")
    if is_action_valid is None:
        if penalty != 0.0:
            raise RolloutError(
                "invalid_action_penalty is set, but is_action_valid is not given", field="is_action_valid"
            )
        valid = np.ones(n, dtype=np.float64)
    else:
        valid = _numbers(is_action_valid, n, "is_action_valid")
        bad = np.flatnonzero((valid != 0) & (valid != 1))
        if bad.size:
            i = int(bad[0])
            raise RolloutError(f"expected booleans, got {valid[i]} at row {i}", field="is_action_valid", **where(i))
    state = None if anchor_obs is None else _states(_array(anchor_obs, n, "anchor_obs"), where)

    # step order, and adjust_batch's copies
    pos = step_positions(traj) if step_index is None else _integers(step_index, n, "step_index")
    rows_idx = np.arange(n)
    order = np.lexsort((pos, traj))  # stable: copies after their original in row order
    s_traj, s_pos = traj[order], pos[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (s_traj[1:] != s_traj[:-1]) | (s_pos[1:] != s_pos[:-1])
    original = np.empty(n, dtype=np.int64)
    original[order] = order[np.maximum.accumulate(np.where(new, rows_idx, 0))]
    copies = np.flatnonzero(original != rows_idx)
    if copies.size:
        _check_copies(copies, original, pos, mask, responses, r, valid, state, where)
        keep = np.flatnonzero(original == rows_idx)
        distinct_row = torch.as_tensor((np.cumsum(original == rows_idx) - 1)[original], device=response_mask.device)
    else:
        keep, distinct_row = rows_idx, None
    k_traj, k_pos, k_r, k_valid = traj[keep], pos[keep], r[keep], valid[keep]
    num_traj = len(traj_names)

    # the metadata verl-agent copies onto every row must agree with the rows
    steps = np.bincount(k_traj, minlength=num_traj)
    if episode_lengths is not None:
        claimed = _numbers(episode_lengths, n, "episode_lengths")[keep]
        off = np.flatnonzero(claimed != steps[k_traj])
        if off.size:
            i = int(keep[off[0]])
            hint = (
                " (rows duplicated by adjust_batch? give step_index: add_step_index right after the rollout loop)"
                if step_index is None and claimed[off[0]] < steps[traj[i]]
                else ""
            )
            raise RolloutError(
                f"row {i} says episode_lengths {claimed[off[0]]:g}, but the trajectory has {steps[traj[i]]} rows{hint}",
                field="episode_lengths",
                **where(i),
            )
    if episode_rewards is not None:
        total = np.bincount(k_traj, weights=k_r, minlength=num_traj)
        claimed = _numbers(episode_rewards, n, "episode_rewards")[keep]
        off = np.flatnonzero(~np.isclose(claimed, total[k_traj], rtol=1e-5, atol=1e-4))
        if off.size:
            i = int(keep[off[0]])
            raise RolloutError(
                f"row {i} says episode_rewards {claimed[off[0]]:g}, but the trajectory's rewards sum to "
                f"{total[traj[i]]:g} over its {steps[traj[i]]} steps",
                field="episode_rewards",
                **where(i),
            )

    # the last step's env reward is the outcome; everything else, penalties included, intermediate
    s_order = np.lexsort((k_pos, k_traj))
    is_last = np.zeros(keep.size, dtype=bool)
    is_last[s_order[np.r_[k_traj[s_order][1:] != k_traj[s_order][:-1], True]]] = True
    last_reward = np.zeros(num_traj)
    last_reward[k_traj[is_last]] = k_r[is_last]
    outcome = last_reward[k_traj]
    step_reward = np.where(is_last, 0.0, k_r) - penalty * (1.0 - k_valid)

    device = response_mask.device
    ids = [f"{traj_names[t]} (row {i})" for t, i in zip(k_traj.tolist(), keep.tolist(), strict=True)]
    start, end = (None, None) if tool_call is None else tool_call
    k_responses = None if responses is None else responses[torch.as_tensor(keep, device=responses.device)]
    rows = from_trainer_tensors(
        mask[torch.as_tensor(keep, device=device)],
        uid_arr[keep],
        outcome=torch.as_tensor(outcome, dtype=torch.float32, device=device),
        responses=k_responses,
        tool_call_start=start,
        tool_call_end=end,
        ids=ids,
        step_rewards=torch.as_tensor(step_reward, dtype=torch.float32, device=device),
        state=None if state is None else torch.as_tensor(state[keep], device=device),
    )
    if tool_call is not None and k_responses is not None:
        rows = name_calls(rows, k_responses, call_identity, decode=decode, markers=markers)
    if anchor_obs is not None and state is not None:
        anchors = _array(anchor_obs, n, "anchor_obs")[keep]
        rows = _with_anchor_texts(rows, anchors, state[keep], k_traj, s_order, is_last)
    b = TrainerRows.from_rows(rows, traj_arr[keep], k_pos)
    return VerlAgentRows(b.rows, b.rollouts, b.row_traj, b.step_of, b.call_of, distinct_row=distinct_row)


def _check_copies(
    copies: np.ndarray,
    original: np.ndarray,
    pos: np.ndarray,
    mask: Tensor,
    responses: Tensor | None,
    rewards: np.ndarray,
    valid: np.ndarray,
    state: np.ndarray | None,
    where: Where,
) -> None:
    """Rows sharing ``(traj_uid, step_index)`` must be copies of one step (their uid is the
    trajectory's, checked before)."""
    src = original[copies]
    at_copy, at_src = torch.as_tensor(copies, device=mask.device), torch.as_tensor(src, device=mask.device)
    differs = {"response_mask": (mask[at_copy] != mask[at_src]).any(1).cpu().numpy()}
    if responses is not None:
        on = mask[at_copy].to(responses.device)
        moved = responses[at_copy.to(responses.device)] != responses[at_src.to(responses.device)]
        differs["responses"] = (moved & on).any(1).cpu().numpy()
    differs["rewards"] = rewards[copies] != rewards[src]
    differs["is_action_valid"] = valid[copies] != valid[src]
    if state is not None:
        differs["anchor_obs"] = state[copies] != state[src]
    for field, bad in differs.items():
        hit = np.flatnonzero(bad)
        if hit.size:
            i, j = int(copies[hit[0]]), int(src[hit[0]])
            raise RolloutError(
                f"row {i} has the traj_uid and step_index ({int(pos[i])}) of row {j} but a different {field}: "
                "rows of one (traj_uid, step_index) must be copies of one step (is step_index per trajectory?)",
                field=field,
                **where(i),
            )


def _with_anchor_texts(
    rows: Rollouts, anchors: np.ndarray, state: np.ndarray, traj: np.ndarray, s_order: np.ndarray, is_last: np.ndarray
) -> Rollouts:
    """Write the anchors as the texts ``stepcredit.core.anchor_observations`` reads back — the first
    step's as its trajectory's prompt, each later step's as the previous step's observation — so
    ``gigpo(similarity=...)`` compares them. A non-text anchor is written as a digest of its key:
    unrelated 32-digit hex strings are far apart at any usual threshold, so those group exactly."""
    n = anchors.shape[0]
    texts = np.empty(n, dtype=object)
    texts[:] = [
        a if isinstance(a, str) else hashlib.blake2b(b"%d" % k, digest_size=16).hexdigest()
        for a, k in zip(anchors, state.tolist(), strict=True)
    ]
    s_text = texts[s_order]
    first_sorted = np.r_[True, traj[s_order][1:] != traj[s_order][:-1]]
    prompt_of_traj = np.empty(int(traj.max()) + 1, dtype=object)
    prompt_of_traj[traj[s_order][first_sorted]] = s_text[first_sorted]
    nxt = np.empty(n, dtype=object)
    nxt[s_order[:-1]] = s_text[1:]
    observation = np.where(is_last, "", nxt)
    new = replace(
        rows.texts,
        prompt=pa.array(prompt_of_traj[traj].tolist(), type=pa.large_string()),
        observation=pa.array(observation.tolist(), type=pa.large_string()),
    )
    return replace(rows, texts=new)


def _response_mask(data: DataProtoLike) -> Tensor:
    """``response_mask``, or — before verl-agent's trainer adds it — ``attention_mask[:, -R:]``."""
    keys = set(data.batch.keys())
    if "response_mask" in keys:
        return data.batch["response_mask"]  # type: ignore[no-any-return]
    if "attention_mask" in keys and "responses" in keys:
        width = data.batch["responses"].shape[-1]
        return data.batch["attention_mask"][:, -width:]  # type: ignore[no-any-return]
    raise RolloutError("the batch has neither response_mask nor attention_mask and responses", field="response_mask")


def advantages_for_verl_agent(
    data: DataProtoLike, recipe: RecipeSpec, *, step_index: str | None = STEP_INDEX, **options: Any
) -> RowCredit:
    """Run ``recipe`` on a verl-agent ``DataProto`` and return its ``(N, R)`` advantages for every row.

    Reads ``batch["response_mask"]`` (or ``attention_mask[:, -R:]``), ``batch["responses"]`` and
    ``non_tensor_batch["uid" | "traj_uid" | "rewards" | "anchor_obs" | "is_action_valid" |
    "episode_rewards" | "episode_lengths"]`` (the last four when present) and the step index under
    ``non_tensor_batch[step_index]`` when present (else row order: see ``rows_from_verl_agent``).
    ``options`` are ``rows_from_verl_agent``'s keywords, e.g. ``invalid_action_penalty=0.1`` (the
    trainer's ``invalid_action_penalty_coef`` when ``use_invalid_action_penalty`` is on) or
    ``tool_call``. Put the result in the batch with ``write_advantages``.
    """
    nt = data.non_tensor_batch

    def need(key: str) -> np.ndarray:
        if key not in nt:
            raise RolloutError(
                f"the batch has no non_tensor_batch[{key!r}] (verl-agent's rollout loop sets it)", field=key
            )
        return nt[key]

    keys = set(data.batch.keys())
    rows = rows_from_verl_agent(
        _response_mask(data),
        need("uid"),
        need("traj_uid"),
        need("rewards"),
        step_index=nt.get(step_index) if step_index is not None else None,
        anchor_obs=nt.get("anchor_obs"),
        is_action_valid=nt.get("is_action_valid"),
        episode_rewards=nt.get("episode_rewards"),
        episode_lengths=nt.get("episode_lengths"),
        responses=data.batch["responses"] if "responses" in keys else None,
        **options,
    )
    return rows.run(recipe)


def write_advantages(data: DataProtoLike, credit: RowCredit | Tensor) -> None:
    """Put ``advantages`` and ``returns`` ``(N, R)`` float32 into ``data.batch``, as verl-agent's
    ``compute_advantage`` leaves them for the actor (both the same tensor; zero off the response mask)."""
    adv = credit.advantages if isinstance(credit, RowCredit) else credit
    mask = _response_mask(data)
    if tuple(adv.shape) != tuple(mask.shape):
        raise ValueError(f"advantages of shape {tuple(adv.shape)} do not fit the batch's {tuple(mask.shape)} rows")
    adv = adv.to(device=mask.device, dtype=torch.float32)
    data.batch["advantages"] = adv
    data.batch["returns"] = adv
