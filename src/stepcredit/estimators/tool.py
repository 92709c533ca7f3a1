"""Tool-call credit: ToolPO and action-anchored credit."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from stepcredit.core import TOOL_OK, Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import NonNegative, OpenUnit, UserCode, import_callable, register
from stepcredit.views import argument_leaves

Verifier = Callable[[str, str, str], bool]


def correct_calls(rollouts: Rollouts, correct: str | Verifier = "tool_ok") -> Tensor:
    """``[C]`` bool: which calls count as correct — ``"tool_ok"``: the tool ran without error; or a
    verifier ``fn(name, canonical_arguments, result) -> bool`` (a callable or ``"module:function"``),
    called once per call on the host."""
    r = rollouts
    if correct == "tool_ok":
        return r.call_ok == TOOL_OK
    fn = import_callable(correct, "correct (besides 'tool_ok')")
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
    correct: Annotated[str | Verifier, UserCode] = "tool_ok",
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
    call_traj = r.call_traj
    action_reward = action_weight * segments.segment_sum(good, call_traj, r.num_trajectories)
    action = segments.group_normalize(action_reward, r.group, r.num_groups, norm=norm, eps=eps)
    return Credit(succ, call=action[call_traj])


CallIdentity = Literal["arguments", "effect"]


def call_keys(rollouts: Rollouts, identity: CallIdentity = "arguments") -> tuple[Tensor, int]:
    """Dense id of every call within its group. ``identity="arguments"``: the call is ``(tool name,
    canonical arguments)``. ``"effect"``: also two calls of one tool with the same argument *values*
    (as a multiset, whatever parameter holds which) that returned the same result are one call —
    ``add(a=4, b=18)`` and ``add(a=18, b=4)`` both giving 22, a search with its filters swapped; the
    classes are the connected components of both relations, so the same arguments stay one call even
    where the results differ (a fresh reservation id per booking)."""
    r = rollouts
    assert r.texts is not None
    if r.num_calls == 0:
        return torch.zeros(0, dtype=torch.int64, device=r.device), 0
    sep = pa.scalar("\x1f", pa.large_string())
    joined = pc.binary_join_element_wise(r.texts.call_name, r.texts.call_arguments, sep)
    group = r.step_group[r.call_step]
    keys, k = segments.unique_pairs(group, _codes(joined, r.device), a_size=r.num_groups)
    if identity == "arguments":
        return keys, k
    if identity != "effect":
        raise ValueError(f"identity must be 'arguments' or 'effect', got {identity!r}")
    distinct = pc.dictionary_encode(r.texts.call_arguments)  # each distinct argument text read once
    values = pa.array([_value_multiset(a) for a in distinct.dictionary.to_pylist()], pa.large_string()).take(
        distinct.indices
    )
    effect = pc.binary_join_element_wise(r.texts.call_name, values, r.texts.call_result, sep)
    other, k_other = segments.unique_pairs(group, _codes(effect, r.device), a_size=r.num_groups)
    return segments.connected_components(keys, k, other, k_other)


def _codes(strings: pa.Array, device: torch.device) -> Tensor:
    return torch.from_numpy(pc.dictionary_encode(strings).indices.to_numpy().astype("int64")).to(device)


def _value_multiset(arguments: str) -> str:
    """The sorted leaf values of a call's JSON arguments, whatever parameters or nesting hold them;
    arguments that are not JSON stand for themselves."""
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return "\x1e" + arguments
    out = []
    for _, leaf in argument_leaves(parsed):
        try:
            out.append(json.dumps(leaf, sort_keys=True))
        except (ValueError, RecursionError):  # a value nested past any reading: one opaque leaf
            out.append("\x1d")
    return "\x1e".join(sorted(out))


def key_occurrences(
    rollouts: Rollouts, identity: CallIdentity = "arguments"
) -> tuple[Tensor, int, Tensor, Tensor, Tensor]:
    """Which trajectories made which call: ``(keys [C], K, call_traj [C], pair_key [P], pair_traj [P])``
    with one (key, trajectory) pair per trajectory that made the call, however often it made it."""
    r = rollouts
    keys, k = call_keys(r, identity)
    call_traj = r.call_traj
    pair, num_pairs = segments.unique_pairs(keys, call_traj, a_size=k)
    pair_key, pair_traj = segments.pair_members(pair, num_pairs, keys, call_traj)
    return keys, k, call_traj, pair_key, pair_traj


@register("credit")
def action_anchor(
    rollouts: Rollouts,
    *,
    prior_strength: NonNegative = 1.0,
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
    adv = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    if r.num_calls == 0:
        return Credit(adv)
    count, mean, std, _ = (x.to(r.outcome.dtype) for x in segments.group_stats(r.outcome, r.group, r.num_groups))
    scale = torch.where(count > 1, std + eps, torch.ones_like(std)) if norm == "std" else torch.ones_like(std)
    keys, k, call_traj, pair_key, pair_traj = key_occurrences(r)
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


def _llr(p_has_if_correct: float, p_has_if_wrong: float) -> tuple[float, float]:
    """Log-likelihood ratios (correct vs wrong) of another trajectory containing / not containing a call."""
    has = math.log(p_has_if_correct / p_has_if_wrong)
    lacks = math.log((1 - p_has_if_correct) / (1 - p_has_if_wrong))
    return has, lacks


@register("credit")
def call_consensus(
    rollouts: Rollouts,
    *,
    success_has_correct: OpenUnit = 0.9,
    success_has_wrong: OpenUnit = 0.05,
    failure_has_correct: OpenUnit = 0.5,
    failure_has_wrong: OpenUnit = 0.1,
    prior_correct: OpenUnit = 0.5,
    success_threshold: float = 1.0,
    norm: Literal["mean", "std"] = "mean",
    eps: float = 1e-6,
) -> Credit:
    """Call consensus (stepcredit's own; label-free): a tool call's credit is how much more likely it is
    correct than wrong, judged by which *other* trajectories of the task made the same call.

    Every other trajectory j of the group is a witness for call c = (tool name, canonical arguments) of
    trajectory i. Under a naive-Bayes model of how agents behave, its testimony is a likelihood ratio:

        a successful run made c:  log(P(has | correct) / P(has | wrong))  with the success rates
        a successful run lacks c: log(P(lacks | correct) / P(lacks | wrong))
        a failed run made / lacks c: the same with the failure rates
        logit P(correct | witnesses) = logit(prior_correct) + Σ_{j ≠ i} LLR_j
        credit(c) = P(correct) − P(wrong) = tanh(logit / 2)        ∈ (−1, 1)

    Tokens of a call get credit(c); a tool-call step gets the mean over its calls; every other step
    gets the trajectory's outcome advantage norm_g(R) (mean-centred by default). The trajectory's own
    outcome never votes for its own calls, so a correct call in a failed run can be credited, and in a
    group where every run failed the failed witnesses still separate calls that agents converge on from
    idiosyncratic ones (credit ≠ 0 where GRPO gives exactly 0).

    The rates were fixed *a priori*, before any evaluation, from four assumptions about agents: a
    successful run makes a required call with probability 0.9 and a given wrong call with 0.05 (wrong
    writes are rare in successes); a failed run makes a required call with 0.5 (it gets part of the way)
    and a given wrong call with 0.1 (mistakes are idiosyncratic: different agents err differently);
    no prior preference (0.5). What it assumes and where it is biased: (1) a call is identified by its
    exact name and arguments — a correct call written differently (argument order is canonicalised,
    values are not) counts as another call; (2) witnesses are treated as independent, but runs of the
    same agent family make correlated mistakes, which then look like consensus; (3) calls every run
    makes regardless of the task (reads such as fetching the user) gather consensus too — harmless for
    training signal, but they are not "correct" in any strong sense; (4) a task with a single run has no
    witnesses: its calls get tanh(logit(prior) / 2) = 0.
    """
    r = rollouts
    s_has, s_lacks = _llr(success_has_correct, success_has_wrong)
    f_has, f_lacks = _llr(failure_has_correct, failure_has_wrong)
    adv = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    if r.num_calls == 0:
        return Credit(adv)
    success = r.outcome >= success_threshold
    keys, k, call_traj, pair_key, pair_traj = key_occurrences(r)
    dtype = torch.float64
    key_s = segments.segment_sum(success[pair_traj].to(dtype), pair_key, k)  # successful runs with the call
    key_f = segments.segment_sum((~success[pair_traj]).to(dtype), pair_key, k)
    grp_s = segments.segment_sum(success.to(dtype), r.group, r.num_groups)
    grp_f = segments.segment_sum((~success).to(dtype), r.group, r.num_groups)
    own_s = success[call_traj].to(dtype)  # leave the call's own trajectory out
    has_s, has_f = key_s[keys] - own_s, key_f[keys] - (1 - own_s)
    g = r.group[call_traj]
    lacks_s, lacks_f = grp_s[g] - own_s - has_s, grp_f[g] - (1 - own_s) - has_f
    logit = (
        math.log(prior_correct / (1 - prior_correct))
        + has_s * s_has
        + lacks_s * s_lacks
        + has_f * f_has
        + lacks_f * f_lacks
    )
    value = torch.tanh(logit / 2).to(r.outcome.dtype)
    step_value = segments.segment_mean(value, r.call_step, r.num_steps)
    has_calls = r.calls_per_step > 0
    step = torch.where(has_calls, step_value - adv[r.step_traj], torch.zeros_like(step_value))
    return Credit(adv, step=step, call=value - step_value[r.call_step])
