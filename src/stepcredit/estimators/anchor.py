"""Anchor-state credit: compare steps taken from the same decision point (GiGPO)."""

from __future__ import annotations

from typing import Annotated, Literal

from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import Interval, register
from stepcredit.core.segments import Norm


def step_returns(rollouts: Rollouts, gamma: float) -> Tensor:
    """``G_t = Σ_{k≥t} γ^{k−t} r_k`` within each trajectory, where ``r_k`` is the step's intermediate
    reward and the outcome is the reward of the trajectory's last step."""
    r = rollouts
    rewards = r.reward.clone()
    last = r.step_offsets[1:][r.steps_per_trajectory > 0] - 1
    rewards[last] += r.outcome[r.steps_per_trajectory > 0]
    return segments.reverse_discounted_cumsum(rewards, r.step_offsets, gamma)


def state_groups(rollouts: Rollouts, similarity: float | None = None) -> tuple[Tensor, int]:
    """Dense id of every step's ``(group, state)`` decision point; with ``similarity`` the states come
    from anchor-observation similarity (``stepcredit.core.observation_states``)."""
    r = rollouts
    if similarity is None:
        return r.decision_points
    from stepcredit.core import observation_states

    return segments.unique_pairs(r.step_group, observation_states(r, similarity=similarity), a_size=r.num_groups)


@register("credit")
def gigpo(
    rollouts: Rollouts,
    *,
    step_weight: float = 1.0,
    mode: Literal["mean_norm", "mean_std_norm"] = "mean_norm",
    gamma: float = 0.95,
    eps: float = 1e-6,
    episode_weighting: Literal["steps", "trajectories"] = "steps",
    similarity: Annotated[float, Interval(0, 1, low_open=True)] | None = None,
) -> Credit:
    """Group-in-Group Policy Optimization: episode-level GRPO plus a step-level comparison among steps
    that share an anchor state.

        A_E(i)  = (R_i − mean_{g(i)} R) [/ (std_{g(i)} R + ε)]                      (episode, Eq. 3)
        R_i     = outcome_i + Σ_t r_{i,t}                     (the episode's total reward)
        G_t     = Σ_{k≥t} γ^{k−t} r_k     (r_k: step reward; the outcome is the last step's reward)
        A_S(t)  = (G_t − mean_{(g, s_t)} G) [/ (std_{(g, s_t)} G + ε)]            (step, Eq. 7)
        A(t)    = A_E(i) + ω · A_S(t)                                              (Eq. 8)

    ``(g, s_t)`` is the step group: steps of the same task taken from the same anchor state
    (``Rollouts.state``; or, with ``similarity``, anchor observations whose ``difflib`` ratio is at
    least that threshold, e.g. 0.95). Feng et al. 2025, arXiv:2505.10978; conventions of verl-agent's
    ``compute_gigpo_outcome_advantage``:

    * ``mode``: "mean_norm" (default, no std division) or "mean_std_norm";
    * ``episode_weighting="steps"`` (verl-agent's default): the episode statistics count each
      trajectory once per step row, so long trajectories weigh more; "trajectories" counts each once;
    * an episode group with a single row uses mean 0 / std 1; a step group with a single step gets
      A_S = 0; a group of equal values gets exactly 0.
    With all states distinct, no intermediate rewards and ``episode_weighting="trajectories"`` this is
    ``grpo`` with the same norm.
    """
    r = rollouts
    norm: Norm = "mean" if mode == "mean_norm" else "std"
    weights = r.steps_per_trajectory if episode_weighting == "steps" else None
    total = r.outcome + segments.segment_sum(r.reward, r.step_traj, r.num_trajectories)
    episode = segments.group_normalize(total, r.group, r.num_groups, norm=norm, eps=eps, weights=weights)
    ids, k = state_groups(r, similarity)
    returns = step_returns(r, gamma)
    step = segments.group_normalize(returns, ids, k, norm=norm, eps=eps, singleton="zero")
    return Credit(episode, step=step * step_weight)
