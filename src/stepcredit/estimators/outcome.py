"""Outcome-level estimators: one advantage per trajectory, shared by all of its steps and tokens.

These are the baselines the rest of the library argues against, reproduced exactly (verl's
conventions are the defaults; tests compare with verl 0.9.1's ``compute_*`` functions).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from stepcredit.core import Rollouts, segments
from stepcredit.core.credit import Credit
from stepcredit.core.registry import register
from stepcredit.core.segments import Norm, Singleton

Weighting = Literal["auto", "tokens", "trajectories"]


def token_weights(rollouts: Rollouts, weighting: Weighting) -> Tensor | None:
    """Row weights for batch whitening: each trajectory's token count ("tokens"; "auto" when the batch
    has token columns) or none, i.e. each trajectory once ("trajectories")."""
    if weighting == "tokens" and rollouts.response_mask is None:
        raise ValueError("weighting='tokens' needs token columns; use 'trajectories' for logs without tokens")
    if rollouts.response_mask is None or weighting == "trajectories":
        return None
    return rollouts.tokens_per_trajectory  # = response_mask.sum(1), from the step spans


@register("credit")
def grpo(
    rollouts: Rollouts,
    *,
    norm: Norm = "std",
    eps: float = 1e-6,
    unbiased: bool = True,
    singleton: Singleton = "raw",
) -> Credit:
    """Group Relative Policy Optimization: the outcome, normalised within its group.

        A_i = (R_i − mean_{j∈g(i)} R_j) / (std_{j∈g(i)} R_j + ε)        (norm="std")
        A_i =  R_i − mean_{j∈g(i)} R_j                                   (norm="mean", Dr.GRPO)

    Every step and token of trajectory i gets A_i. Shao et al. 2024 (DeepSeekMath), arXiv:2402.03300;
    Dr.GRPO: Liu et al. 2025, arXiv:2503.20783.

    Args:
        norm: "std" (GRPO), "mean" (Dr.GRPO: no division by std) or "none" (raw outcome).
        eps: added to the std (verl: 1e-6).
        unbiased: Bessel-corrected (N−1) std, as ``torch.std`` and verl.
        singleton: a group with one trajectory uses mean 0 / std 1 ("raw", verl: A = R / (1 + ε)) or
            gets 0 ("zero").
    A group whose outcomes are all equal gets exactly 0.
    """
    adv = segments.group_normalize(
        rollouts.outcome,
        rollouts.group,
        rollouts.num_groups,
        norm=norm,
        eps=eps,
        unbiased=unbiased,
        singleton=singleton,
    )
    return Credit(adv)


@register("credit")
def rloo(rollouts: Rollouts) -> Credit:
    """REINFORCE Leave-One-Out: the outcome minus the mean outcome of the *other* group members.

        A_i = R_i − (1 / (n_g − 1)) Σ_{j∈g(i), j≠i} R_j

    A trajectory alone in its group keeps A_i = R_i (baseline 0, as verl). Kool et al. 2019; Ahmadian
    et al. 2024 ("Back to Basics"), arXiv:2402.14740.
    """
    r = rollouts
    return Credit(r.outcome - segments.leave_one_out_mean(r.outcome, r.group, r.num_groups))


@register("credit")
def reinforce_pp_baseline(
    rollouts: Rollouts,
    *,
    weighting: Weighting = "auto",
) -> Credit:
    """REINFORCE++ with a group baseline: subtract the group mean, then whiten over the batch.

        a_i = R_i − mean_{j∈g(i)} R_j        (a trajectory alone in its group: a_i = R_i)
        A_i = (a_i − μ) / sqrt(σ² + 1e-8),   μ, σ² the weighted mean and unbiased variance of a

    verl whitens the broadcast ``(B, T)`` tensor over the response mask, so each trajectory weighs by
    its number of response tokens (``weighting="tokens"``; μ and σ² with verl's 1e-8 terms). Logs
    without token columns can only weigh each trajectory once (``"trajectories"``); ``"auto"`` picks
    tokens when the batch has them. Hu 2025, arXiv:2501.03262.
    """
    r = rollouts
    a = segments.group_normalize(r.outcome, r.group, r.num_groups, norm="mean")
    return Credit(segments.whiten(a, token_weights(r, weighting)))


@register("credit")
def ms_grpo(
    rollouts: Rollouts,
    *,
    norm: Norm = "std",
    eps: float = 1e-6,
    unbiased: bool = True,
    singleton: Singleton = "raw",
) -> Credit:
    """Multi-Step GRPO: the episode's cumulative reward, group-normalised, credited to every step.

        R_i = outcome_i + Σ_t r_{i,t}        A_i = (R_i − mean_{g(i)} R) / (std_{g(i)} R + ε)

    Every step (s_{i,t}, a_{i,t}) of episode i inherits A_i. Pair with the ``abs_adv_sampling``
    selection for the paper's |A|-weighted episode sampling. Dilkes, Yazdanpanah & Stein 2025,
    arXiv:2508.10839. Normalisation options as in ``grpo``; with no intermediate rewards this is GRPO.
    """
    r = rollouts
    episode = r.outcome + segments.segment_sum(r.reward, r.step_traj, r.num_trajectories)
    adv = segments.group_normalize(
        episode, r.group, r.num_groups, norm=norm, eps=eps, unbiased=unbiased, singleton=singleton
    )
    return Credit(adv)
