"""Turn-level credit: MT-GRPO, one function per formula, and per-turn reward-to-go baselines.

Zeng et al. 2025, arXiv:2505.11821 (Multi-Turn-RL-Agent, ``_assign_advantages``; λ =
``turn_advantage_coef`` = 1). The paper rewards the first tool turn (``mt_grpo_first_turn``); the two
extensions to agents that call tools many times are ``mt_grpo_per_index`` (biased) and
``mt_grpo_per_trajectory`` (unbiased). ``mt_grpo(turns=...)`` selects one of them, for recipes.

``R_T`` (``turn_reward``) is the reward of a tool turn: the tool-call step's intermediate reward
(``"step_reward"``) or 1 if its calls ran without error, else 0 (``"tool_ok"``, the paper's
tool-execution reward). Without tool calls every variant is ``grpo``.

``per_turn`` and ``per_turn_index`` credit every turn (every step) with its reward-to-go against a
baseline of the group at the same turn index (verl RFC #7244): ``per_turn`` with a leave-one-out
baseline that no rollout's own length enters (unbiased), ``per_turn_index`` with the per-index
normalisation summed to the rollout's own last turn (biased; kept for comparison).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from stepcredit.core import TOOL_OK, Rollouts, StepKind, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import register
from stepcredit.core.segments import Norm, Singleton
from stepcredit.estimators.step import step_positions

__all__ = [
    "calls_before",
    "mt_grpo",
    "mt_grpo_first_turn",
    "mt_grpo_per_index",
    "mt_grpo_per_trajectory",
    "per_turn",
    "per_turn_index",
]

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


def _reward_to_go(r: Rollouts) -> Tensor:
    """``[S]`` float64: G_{i,k} = Σ_{t≥k} r_{i,t} + R_i, rounded once to the rewards' dtype (float32),
    so that returns equal in float32 (0.2 + 0.8 and 1.0) compare equal and give exactly 0."""
    tail = segments.reverse_discounted_cumsum(r.reward.double(), r.step_offsets, 1.0)
    return (tail + r.outcome.double()[r.step_traj]).to(r.reward.dtype).double()


@register("credit")
def per_turn(rollouts: Rollouts, *, singleton: Singleton = "raw") -> Credit:
    """Per-turn reward-to-go minus a leave-one-out baseline over the group's rollouts that reached the
    same turn: the unbiased turn-level baseline of verl RFC #7244
    (https://github.com/verl-project/verl/issues/7244). Turn k of rollout i is its k-th step,
    k = 1..T_i (T_i: its number of steps).

        G_{i,k} = Σ_{t=k}^{T_i} r_{i,t} + R_i                 reward-to-go (undiscounted, outcome included)
        J_k     = {j ∈ g(i) : T_j ≥ k}                        rollouts of i's group that reached turn k
        b_{i,k} = 1/(|J_k| − 1) · Σ_{j ∈ J_k, j ≠ i} G_{j,k}   leave-one-out mean
        A_{i,k} = G_{i,k} − b_{i,k}                           J_k = {i}: 0 ("zero") or G_{i,k} ("raw")

    Inputs: ``reward`` r_{i,t} (intermediate reward of turn t: its action and the observation it
    caused), ``outcome`` R_i, ``group`` g(i), ``step_offsets`` (T_i). The credit is ``Credit.step``;
    ``Credit.trajectory`` is 0.

    **Why it is unbiased.** The policy gradient is E[Σ_k ∇log π(a_{i,k} | h_{i,k}) · G_{i,k}]. The
    baseline b_{i,k} — and whether J_k holds another rollout at all — is a function of the *other*
    rollouts of the group only, which are independent of rollout i, so
    E[b_{i,k} ∇log π(a_{i,k} | h_{i,k})] = E[b_{i,k}] · E[∇log π(a_{i,k} | h_{i,k})] = 0. Rollout i's own
    stopping turn T_i never enters its baseline. ``per_turn_index`` subtracts Σ_{t=k}^{T_i−1} μ_t
    instead, whose number of terms is set by i's own "stop / take another turn" decisions: an
    action-dependent baseline, biased by the accumulated intermediate-reward group mean.

    Assumptions and caveats:

    * The rollouts of a group are independent samples of one policy on one task: no shared prefixes
      (rollout trees: use a tree estimator) and no outcome-dependent selection before credit (a gate
      or a resampler makes the kept rollouts of a group dependent).
    * ``singleton="raw"`` (default, ``rloo``'s convention): a turn no other rollout of the group reached
      gets baseline 0, A = G_{i,k} — exactly unbiased at every turn, at the price of variance there.
      ``"zero"`` gives such a turn 0 instead (a group of one gets 0; a constant added to every outcome
      then changes nothing) but drops the whole term, not only its baseline: in expectation turn k's
      term of the gradient is scaled by P(another rollout of the group reaches turn k) — 1 for turns
      every rollout reaches, less for late turns; each turn's term keeps its sign, but a parameter
      that acts on several turns gets a reweighted sum.
    * Variance, not bias: b_{i,k} averages over *different states* that share the index k; a
      state-conditioned baseline (a critic, tree siblings, ``gigpo``'s anchor states) reduces it.
    * The gradient meant is Σ_k A_{i,k} ∇log π(turn k's action). A token loss that divides by each
      rollout's own length adds a length bias of its own (Dr.GRPO, arXiv:2503.20783).
    * Undiscounted (γ = 1); the outcome comes once, after the last turn. A rollout without steps takes
      no action and reaches no turn.
    * With T_i = 1 for every rollout, A_i = ``rloo`` on R_i + r_{i,1} (groups of one included).

    float32 out; the returns are summed in float64 and rounded once to float32, the baseline is
    computed in float64.
    """
    r = rollouts
    ret = _reward_to_go(r)
    turn, num_turns = segments.unique_pairs(r.step_group, step_positions(r), a_size=r.num_groups)
    adv = ret - segments.leave_one_out_mean(ret, turn, num_turns)  # alone at its turn: baseline 0
    if singleton == "zero":
        alone = segments.segment_count(turn, num_turns)[turn] <= 1
        adv = torch.where(alone, torch.zeros_like(adv), adv)
    return Credit(torch.zeros_like(r.outcome), step=adv.to(r.reward.dtype))


@register("credit")
def per_turn_index(rollouts: Rollouts) -> Credit:
    """Per-turn-index normalisation summed to the rollout's own last turn: the MT-GRPO-style
    construction (arXiv:2505.11821 extended to many turns) that verl RFC #7244 shows is **biased**.
    Kept for comparison; use ``per_turn``.

    Turn k of rollout i is its k-th step. Turns t < T_i are intermediate; the last turn ends the
    rollout, and its reward counts with the outcome, R̃_i = R_i + r_{i,T_i} (MT-GRPO's outcome term):

        μ_t       = mean_{j ∈ g(i), T_j > t} r_{j,t}             intermediate rewards of index t
        A^B_{i,k} = (R̃_i − mean_{j ∈ g(i)} R̃_j) + Σ_{t=k}^{T_i−1} (r_{i,t} − μ_t)
                  = G_{i,k} − [mean_g R̃ + Σ_{t=k}^{T_i−1} μ_t]

    (outcome term in ``Credit.trajectory``, the sum in ``Credit.step``; a group of one gets 0).

    **Why it is biased.** The baseline in brackets has T_i − k per-index terms: as many as rollout i's
    own intermediate turns from k on. Stopping at turn k leaves none; taking another turn subtracts
    μ_k + … + μ_{T_i−1}. So E[A^B | continue] − E[A^B | stop] = (Q_continue − Q_stop) −
    E[Σ_{t=k}^{T_i−1} μ_t | continue]: every "take another turn" decision pays a hidden −E[R_intermediate]
    per further turn — the closed form of the RFC (times (G−1)/G for the include-self means in a group
    of G). With positive tool rewards it pushes toward stopping early, with costs toward longer
    rollouts, even when both choices have the same return. ``per_turn`` gives turn k a baseline that
    no rollout's own length enters.
    """
    r = rollouts
    reward = r.reward.double()
    zero = torch.zeros_like(reward)
    k = step_positions(r)
    last = k == r.steps_per_trajectory[r.step_traj] - 1
    mid = ~last
    index, num_index = segments.unique_pairs(r.step_group[mid], k[mid], a_size=r.num_groups)
    mu = segments.segment_mean(reward[mid], index, num_index)
    dev = zero.clone()
    dev[mid] = reward[mid] - mu[index]
    # the last turn's dev is 0, so summing to the trajectory's end sums t = k..T_i−1
    tail = segments.reverse_discounted_cumsum(dev, r.step_offsets, 1.0)
    final = r.outcome.double() + segments.segment_sum(torch.where(last, reward, zero), r.step_traj, r.num_trajectories)
    outcome = segments.group_normalize(final, r.group, r.num_groups, norm="mean", singleton="zero")
    return Credit(outcome.to(r.outcome.dtype), step=tail.to(r.reward.dtype))
