"""Tool-call credit: ToolPO and action-anchored credit."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.credit import Credit
from stepcredit.registry import register
from stepcredit.rollouts import TOOL_OK, Rollouts

Verifier = Callable[[str, str, str], bool]


def _verifier(spec: str | Verifier) -> Verifier:
    if callable(spec):
        return spec
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(f"correct must be 'tool_ok', a callable or 'module:function', got {spec!r}")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"{spec!r} is not a callable")
    return fn


def correct_calls(rollouts: Rollouts, correct: str | Verifier = "tool_ok") -> Tensor:
    """``[C]`` bool: which calls count as correct — ``"tool_ok"``: the tool ran without error; or a
    verifier ``fn(name, canonical_arguments, result) -> bool`` (a callable or ``"module:function"``),
    called once per call on the host."""
    r = rollouts
    if correct == "tool_ok":
        return r.call_ok == TOOL_OK
    fn = _verifier(correct)
    assert r.texts is not None
    names, args, results = (
        r.texts.call_name.to_pylist(),
        r.texts.call_arguments.to_pylist(),
        r.texts.call_result.to_pylist(),
    )
    return torch.tensor(
        [bool(fn(n, a, o)) for n, a, o in zip(names, args, results, strict=True)], dtype=torch.bool, device=r.device
    )


@register("credit")
def toolpo(
    rollouts: Rollouts,
    *,
    action_weight: float = 1.0,
    correct: str | Verifier = "tool_ok",
    norm: segments.Norm = "mean",
    eps: float = 1e-6,
) -> Credit:
    """ToolPO: every model token gets the group-relative outcome advantage; the tokens of tool calls
    also get the group-relative *action* advantage.

        A_succ(i)   = norm_g(R_i)
        R_action(i) = λ · #{correct tool calls of i}            A_action(i) = norm_g(R_action)
        A(token)    = A_succ(i) + 1[token in a tool-call span] · A_action(i)

    DeepAgent (Li et al. 2025, arXiv:2510.21618), Sec. 3.5. No training code is released and the
    paper does not settle (a) what makes a call correct — ``correct`` is "tool_ok" (no error) or a
    verifier callable — nor (b) whether the advantages are divided by the group std: ``norm`` is a
    flag, "mean" (the formulas as printed) by default. Tool-call tokens need call token spans in the
    batch; on logs the action part shows in ``Credit.per_call``. Without tool calls this is ``grpo``.
    """
    r = rollouts
    succ = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    good = correct_calls(r, correct).to(r.outcome.dtype)
    call_traj = r.step_traj[r.call_step]
    action_reward = action_weight * segments.segment_sum(good, call_traj, r.num_trajectories)
    action = segments.group_normalize(action_reward, r.group, r.num_groups, norm=norm, eps=eps)
    return Credit(succ, call=action[call_traj])


def call_keys(rollouts: Rollouts) -> tuple[Tensor, int]:
    """Dense id of every call's ``(group, tool name, canonical arguments)``."""
    r = rollouts
    assert r.texts is not None
    if r.num_calls == 0:
        return torch.zeros(0, dtype=torch.int64, device=r.device), 0
    joined = pc.binary_join_element_wise(
        r.texts.call_name, r.texts.call_arguments, pa.scalar("\x1f", pa.large_string())
    )
    codes = torch.from_numpy(pc.dictionary_encode(joined).indices.to_numpy().astype("int64")).to(r.device)
    return segments.unique_pairs(r.step_group[r.call_step], codes, a_size=r.num_groups)


@register("credit")
def action_anchor(
    rollouts: Rollouts,
    *,
    prior_strength: float = 1.0,
    leave_one_out: bool = True,
    norm: Literal["mean", "std"] = "mean",
    eps: float = 1e-6,
) -> Credit:
    """Action-anchored credit (stepcredit's own; label-free, for logs without trees or repeated states).

    A tool call is anchored by its key ``(group, tool name, canonical arguments)``: the same call made
    in several trajectories of a task. Its value is the mean outcome of the trajectories that contain
    it, compared with the task's mean outcome, and shrunk toward the trajectory's own advantage:

        A_i      = norm_g(R_i)                                   (the trajectory advantage, as grpo)
        Q_{−i}(k)= mean R_j over the other trajectories j of the group that contain key k
        w        = n / (n + n0),   n = #those trajectories,  n0 = prior_strength
        A(call)  = w · (Q_{−i}(k) − V_g) / s_g + (1 − w) · A_i   (s_g = 1, or std_g + ε for "std")

    A tool-call step gets the mean of its calls' values; other steps get A_i. ``leave_one_out``
    (default) keeps a trajectory's own outcome out of its calls' Q, so Q is evidence from *other*
    trajectories; without it a call unique to one trajectory scores that trajectory's outcome.

    What it assumes, and where it is biased: (1) a call's worth is the same wherever it is made in the
    task — context (the state it was made from, the order of calls) is ignored; (2) Q measures
    co-occurrence with success, not causation: a harmless read that successful agents happen to make
    more often gains credit, and a correct call mostly made by weak agents loses it; (3) with few
    trajectories per task Q is noisy, which the shrinkage toward A_i damps; (4) when every trajectory
    of a task failed (or all succeeded), Q − V is 0 and the credit is that of GRPO. Without tool
    calls this is ``grpo``.
    """
    r = rollouts
    if norm not in ("mean", "std"):
        raise ValueError(f"norm must be 'mean' or 'std', got {norm!r}")
    if prior_strength < 0:
        raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
    adv = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    if r.num_calls == 0:
        return Credit(adv)
    count, mean, std, _ = segments.group_stats(r.outcome, r.group, r.num_groups)
    scale = torch.where(count > 1, std + eps, torch.ones_like(std)) if norm == "std" else torch.ones_like(std)
    keys, k = call_keys(r)
    call_traj = r.step_traj[r.call_step]
    pair, num_pairs = segments.unique_pairs(keys, call_traj, a_size=k)
    pair_key = torch.zeros(num_pairs, dtype=torch.int64, device=r.device).scatter_(0, pair, keys)
    pair_traj = torch.zeros(num_pairs, dtype=torch.int64, device=r.device).scatter_(0, pair, call_traj)
    n_key = segments.segment_count(pair_key, k).to(r.outcome.dtype)
    sum_key = segments.segment_sum(r.outcome[pair_traj], pair_key, k)
    own = r.outcome[call_traj]
    n = n_key[keys] - 1 if leave_one_out else n_key[keys]
    q = (sum_key[keys] - (own if leave_one_out else 0)) / n.clamp_min(1)
    w = torch.where(n > 0, n / (n + prior_strength), torch.zeros_like(n))
    g = r.group[call_traj]
    value = w * (q - mean[g]) / scale[g] + (1 - w) * adv[call_traj]
    shift = value - adv[call_traj]
    step_shift = segments.segment_mean(shift, r.call_step, r.num_steps)
    return Credit(adv, step=step_shift, call=shift - step_shift[r.call_step])
