"""Turn-level credit: MT-GRPO."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.credit import Credit
from stepcredit.registry import register
from stepcredit.rollouts import TOOL_OK, Rollouts, StepKind
from stepcredit.segments import Norm


def calls_before(rollouts: Rollouts) -> tuple[Tensor, Tensor]:
    """Per step, how many tool-call steps came before it in its trajectory; per trajectory, how many
    tool-call steps it has."""
    r = rollouts
    is_call = (r.kind == int(StepKind.TOOL_CALL)).long()
    upto = torch.cumsum(is_call, 0)
    start = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long, device=r.device), is_call]), 0)
    before = upto - is_call - start[r.step_offsets[:-1]][r.step_traj]
    return before, segments.segment_sum(is_call, r.step_traj, r.num_trajectories)


@register("credit")
def mt_grpo(
    rollouts: Rollouts,
    *,
    turn_coef: float = 1.0,
    turn_reward: Literal["step_reward", "tool_ok"] = "step_reward",
    turns: Literal["first", "per_index", "per_trajectory"] = "first",
    norm: Norm = "std",
    eps: float = 1e-6,
) -> Credit:
    """Multi-Turn GRPO: outcome and turn-level rewards, each group-normalised; the turn advantage goes
    to the tokens of the tool turn it rewards.

        A_O(i) = norm_g(R_O)        A_T(i) = norm_g(R_T)
        tokens up to the first tool result (the first tool-call step and all before it): A_O + λ·A_T
        later tokens: A_O                          (a trajectory without a tool call: A_O + λ·A_T)

    ``R_T`` is the reward of the tool turn: the tool-call step's intermediate reward
    (``turn_reward="step_reward"``) or 1 if its calls ran without error, else 0 (``"tool_ok"``, the
    paper's tool-execution reward). Zeng et al. 2025, arXiv:2505.11821 (Multi-Turn-RL-Agent,
    ``_assign_advantages``; λ = ``turn_advantage_coef`` = 1). ``turns`` extends the two-turn design to
    agents that call tools many times:

    * "first" (the paper): only the first tool turn is rewarded;
    * "per_index": the k-th tool turn of every trajectory is normalised among the k-th tool turns of
      its group. Biased (verl RFC #7244): the baseline of turn k only sees trajectories that survived
      to turn k, so *when* a trajectory stops leaks into the advantage (stopping-time bias);
    * "per_trajectory": the unbiased alternative — each trajectory's mean turn reward, normalised over
      all trajectories of the group, credited to all of its tool turns (and what precedes them).
    Without tool calls every mode is ``grpo``.
    """
    r = rollouts
    if turns not in ("first", "per_index", "per_trajectory"):
        raise ValueError(f"turns must be 'first', 'per_index' or 'per_trajectory', got {turns!r}")
    if turn_reward not in ("step_reward", "tool_ok"):
        raise ValueError(f"turn_reward must be 'step_reward' or 'tool_ok', got {turn_reward!r}")
    n = r.num_trajectories
    outcome = segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)
    is_call = r.kind == int(StepKind.TOOL_CALL)
    rt = r.reward if turn_reward == "step_reward" else (r.tool_ok == TOOL_OK).to(r.reward.dtype)
    before, num_calls = calls_before(r)
    zero = torch.zeros_like(rt)
    if turns == "per_index":
        # turn k of trajectory i: its k-th tool-call step; the group of (task, k)
        ids, k = segments.unique_pairs(r.step_group[is_call], before[is_call])
        adv = torch.zeros_like(rt)
        adv[is_call] = segments.group_normalize(rt[is_call], ids, k, norm=norm, eps=eps)
        # steps after call k-1 up to call k get turn k's advantage: look up by (trajectory, before)
        call_pos = torch.nonzero(is_call).squeeze(1)
        turn_first = r.step_offsets[:-1][r.step_traj[call_pos]]
        slot = torch.full((r.num_steps,), -1, dtype=torch.long, device=r.device)
        slot[turn_first + before[call_pos]] = call_pos  # turn k keyed at (traj start + k - 1)
        key = r.step_offsets[:-1][r.step_traj] + before
        has_turn = before < num_calls[r.step_traj]
        turn_adv = torch.where(has_turn, adv[slot[key.clamp_max(r.num_steps - 1)].clamp_min(0)], zero)
        return Credit(outcome, step=turn_coef * turn_adv)
    first_mode = turns == "first"
    first_call = is_call & (before == 0)
    reward_first = segments.segment_sum(torch.where(first_call, rt, zero), r.step_traj, n)
    reward_mean = segments.segment_sum(torch.where(is_call, rt, zero), r.step_traj, n) / num_calls.clamp_min(1)
    turn = segments.group_normalize(
        reward_first if first_mode else reward_mean, r.group, r.num_groups, norm=norm, eps=eps
    )
    span = num_calls.clamp_min(1) if not first_mode else torch.ones_like(num_calls)
    credited = before < span[r.step_traj]
    return Credit(outcome, step=turn_coef * torch.where(credited, turn[r.step_traj], zero))
