"""Turn-level credit: MT-GRPO, one function per formula.

Zeng et al. 2025, arXiv:2505.11821 (Multi-Turn-RL-Agent, ``_assign_advantages``; λ =
``turn_advantage_coef`` = 1). The paper rewards the first tool turn (``mt_grpo_first_turn``); the two
extensions to agents that call tools many times are ``mt_grpo_per_index`` (biased) and
``mt_grpo_per_trajectory`` (unbiased). ``mt_grpo(turns=...)`` selects one of them, for recipes.

``R_T`` (``turn_reward``) is the reward of a tool turn: the tool-call step's intermediate reward
(``"step_reward"``) or 1 if its calls ran without error, else 0 (``"tool_ok"``, the paper's
tool-execution reward). Without tool calls every variant is ``grpo``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.credit import Credit
from stepcredit.registry import register
from stepcredit.rollouts import TOOL_OK, Rollouts, StepKind
from stepcredit.segments import Norm

__all__ = ["calls_before", "mt_grpo", "mt_grpo_first_turn", "mt_grpo_per_index", "mt_grpo_per_trajectory"]

TurnReward = Literal["step_reward", "tool_ok"]
Turns = Literal["first", "per_index", "per_trajectory"]


def calls_before(rollouts: Rollouts) -> tuple[Tensor, Tensor]:
    """Per step, how many tool-call steps came before it in its trajectory; per trajectory, how many
    tool-call steps it has."""
    r = rollouts
    is_call = (r.kind == int(StepKind.TOOL_CALL)).long()
    upto = torch.cumsum(is_call, 0)
    start = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long, device=r.device), is_call]), 0)
    before = upto - is_call - start[r.step_offsets[:-1]][r.step_traj]
    return before, segments.segment_sum(is_call, r.step_traj, r.num_trajectories)


def _turn_rewards(r: Rollouts, turn_reward: TurnReward) -> Tensor:
    return r.reward if turn_reward == "step_reward" else (r.tool_ok == TOOL_OK).to(r.reward.dtype)


def _outcome_advantage(r: Rollouts, norm: Norm, eps: float) -> Tensor:
    return segments.group_normalize(r.outcome, r.group, r.num_groups, norm=norm, eps=eps)


@register("credit")
def mt_grpo_first_turn(
    rollouts: Rollouts,
    *,
    turn_coef: float = 1.0,
    turn_reward: TurnReward = "step_reward",
    norm: Norm = "std",
    eps: float = 1e-6,
) -> Credit:
    """MT-GRPO as in the paper: the first tool turn's reward, group-normalised, goes to the tokens up
    to the first tool result.

        A_O(i) = norm_g(R_O)        A_T(i) = norm_g(R_T of i's first tool turn)
        steps up to and including the first tool-call step: A_O + λ·A_T;  later steps: A_O
        (a trajectory without a tool call: R_T = 0, A_O + λ·A_T on every step)
    """
    r = rollouts
    rt, zero = _turn_rewards(r, turn_reward), torch.zeros_like(r.reward)
    before, _ = calls_before(r)
    first_call = (r.kind == int(StepKind.TOOL_CALL)) & (before == 0)
    reward_first = segments.segment_sum(torch.where(first_call, rt, zero), r.step_traj, r.num_trajectories)
    turn = segments.group_normalize(reward_first, r.group, r.num_groups, norm=norm, eps=eps)
    credited = before < 1
    return Credit(_outcome_advantage(r, norm, eps), step=turn_coef * torch.where(credited, turn[r.step_traj], zero))


@register("credit")
def mt_grpo_per_index(
    rollouts: Rollouts,
    *,
    turn_coef: float = 1.0,
    turn_reward: TurnReward = "step_reward",
    norm: Norm = "std",
    eps: float = 1e-6,
) -> Credit:
    """MT-GRPO per turn index: the k-th tool turn of every trajectory is normalised among the k-th tool
    turns of its group, and credited to the steps after turn k−1 up to turn k.

        A_T(i, k) = norm_{(g, k)}(R_T(i, k));   step t of i: A_O(i) + λ·A_T(i, k(t)),
        k(t) = 1 + number of tool-call steps before t (0 after i's last tool turn)

    Biased (verl RFC #7244): the baseline of turn k only sees trajectories that survived to turn k, so
    *when* a trajectory stops leaks into the advantage (stopping-time bias).
    """
    r = rollouts
    rt, zero = _turn_rewards(r, turn_reward), torch.zeros_like(r.reward)
    is_call = r.kind == int(StepKind.TOOL_CALL)
    before, num_calls = calls_before(r)
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
    return Credit(_outcome_advantage(r, norm, eps), step=turn_coef * turn_adv)


@register("credit")
def mt_grpo_per_trajectory(
    rollouts: Rollouts,
    *,
    turn_coef: float = 1.0,
    turn_reward: TurnReward = "step_reward",
    norm: Norm = "std",
    eps: float = 1e-6,
) -> Credit:
    """MT-GRPO per trajectory, the unbiased alternative to ``mt_grpo_per_index``: each trajectory's
    mean tool-turn reward, normalised over all trajectories of the group, credited to all of its tool
    turns and what precedes them.

        A_T(i) = norm_g(mean_k R_T(i, k));   steps up to i's last tool-call step: A_O(i) + λ·A_T(i)
    """
    r = rollouts
    rt, zero = _turn_rewards(r, turn_reward), torch.zeros_like(r.reward)
    is_call = r.kind == int(StepKind.TOOL_CALL)
    before, num_calls = calls_before(r)
    total = segments.segment_sum(torch.where(is_call, rt, zero), r.step_traj, r.num_trajectories)
    turn = segments.group_normalize(total / num_calls.clamp_min(1), r.group, r.num_groups, norm=norm, eps=eps)
    credited = before < num_calls.clamp_min(1)[r.step_traj]
    return Credit(_outcome_advantage(r, norm, eps), step=turn_coef * torch.where(credited, turn[r.step_traj], zero))


_VARIANTS = {"first": mt_grpo_first_turn, "per_index": mt_grpo_per_index, "per_trajectory": mt_grpo_per_trajectory}


@register("credit")
def mt_grpo(
    rollouts: Rollouts,
    *,
    turn_coef: float = 1.0,
    turn_reward: TurnReward = "step_reward",
    turns: Turns = "first",
    norm: Norm = "std",
    eps: float = 1e-6,
) -> Credit:
    """Multi-Turn GRPO: outcome and turn-level rewards, each group-normalised; the turn advantage goes
    to the tokens of the tool turn it rewards. ``turns`` picks the formula: "first" (the paper,
    ``mt_grpo_first_turn``), "per_index" (``mt_grpo_per_index``) or "per_trajectory"
    (``mt_grpo_per_trajectory``)."""
    return _VARIANTS[turns](rollouts, turn_coef=turn_coef, turn_reward=turn_reward, norm=norm, eps=eps)
