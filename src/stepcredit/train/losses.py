"""Policy-gradient losses on per-token advantages: one formula per function, verl's names and semantics.

All tensors are ``(B, T)`` over response tokens; ``mask`` is 1 on the tokens the policy generated
(observation and padding tokens 0). Tested against verl 0.9.1's ``compute_policy_loss_vanilla``,
``agg_loss`` and ``kl_penalty`` on random tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "AggMode", "KLKind", "agg_loss", "kl_penalty", "masked_mean", "on_off_policy_loss", "policy_shaping",
    "ppo_clip_loss",
]

AggMode = Literal["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl"]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``Σ mask·x / (Σ mask + 1e-8)`` (verl's ``masked_mean``; masked-out NaNs do not leak in)."""
    mask = mask.to(values.dtype)
    return torch.where(mask.bool(), values, 0.0).sum() / (mask.sum() + 1e-8)


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: AggMode = "token-mean", *, scale: float | None = None) -> Tensor:
    """Aggregate a per-token loss into a scalar (verl's ``agg_loss`` on one data-parallel rank):

    * ``token-mean``: ``Σ_i Σ_t m·ℓ / Σ_i Σ_t m`` — every token weighs the same (DAPO);
    * ``token-sum``: ``Σ_i Σ_t m·ℓ``;
    * ``seq-mean-token-sum``: ``(1/B') Σ_i Σ_t m·ℓ`` over the ``B'`` sequences with a token;
    * ``seq-mean-token-mean``: ``(1/B') Σ_i (Σ_t m·ℓ / Σ_t m)`` — every sequence weighs the same (GRPO paper);
    * ``seq-mean-token-sum-norm``: ``seq-mean-token-sum / scale``, ``scale`` = T unless given (Dr. GRPO).
    """
    m = mask.to(loss_mat.dtype)
    summed = torch.where(m.bool(), loss_mat, 0.0)
    if mode == "token-mean":
        return summed.sum() / m.sum()
    if mode == "token-sum":
        return summed.sum()
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_loss = summed.sum(dim=-1)
        has = (m.sum(dim=-1) > 0).to(loss_mat.dtype)
        loss = (seq_loss * has).sum() / has.sum()
        if mode == "seq-mean-token-sum-norm":
            loss = loss / (float(mask.shape[-1]) if scale is None else scale)
        return loss
    if mode == "seq-mean-token-mean":
        tokens = m.sum(dim=-1)
        seq_loss = summed.sum(dim=-1) / (tokens + 1e-8)
        has = (tokens > 0).to(loss_mat.dtype)
        return (seq_loss * has).sum() / has.sum()
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AggMode.__args__}")  # type: ignore[attr-defined]


def _ppo_token_losses(
    log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float,
    clip_c: float,
) -> tuple[Tensor, dict[str, float]]:
    """``ppo_clip_loss``'s per-token losses, and its metrics over ``mask``."""
    if clip_c <= 1.0:
        raise ValueError(f"the dual-clip constant must be > 1, got {clip_c}")
    log_ratio = torch.clamp(log_prob - old_log_prob, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss1 = torch.maximum(unclipped, clipped)
    loss3 = -advantages * clip_c
    losses = torch.where(advantages < 0, torch.minimum(loss3, loss1), loss1)
    metrics = {
        "clipfrac": float(masked_mean(torch.gt(clipped, unclipped).float(), mask)),
        "clipfrac_lower": float(masked_mean((torch.gt(loss1, loss3) & (advantages < 0)).float(), mask)),
        "ppo_kl": float(masked_mean(-log_ratio.detach(), mask)),
    }
    return losses, metrics


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    agg: AggMode = "token-mean",
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip with asymmetric clipping (DAPO's clip-higher) and dual-clip (Ye et al. 2020):

        r = exp(clamp(log π − log π_old, −20, 20))
        ℓ = max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high))            (Schulman et al. 2017)
        ℓ = min(ℓ, −A·c)   where A < 0                                 (dual-clip, c > 1)

    aggregated with ``agg_loss``. Metrics: ``clipfrac`` (tokens where the clip bound is active),
    ``clipfrac_lower`` (dual-clip active), ``ppo_kl`` (mean of log π_old − log π). Equal to verl's
    ``compute_policy_loss_vanilla``.
    """
    losses, metrics = _ppo_token_losses(log_prob, old_log_prob, advantages, mask, clip_low, clip_high, clip_c)
    return agg_loss(losses, mask, agg), metrics


def policy_shaping(log_prob: Tensor, gamma: float = 0.1) -> Tensor:
    """Critique-GRPO's policy shaping of an off-policy token's probability, ``f(p) = p / (p + γ)`` with
    ``p = π_θ(y_j)`` (Zhang et al. 2025, arXiv:2506.03106, Sec. 3.2; the released code's
    ``off_policy_reshape="p_div_p_0.1"``). Its gradient, ``γ·p / (p + γ)² · ∇log p``, is largest near
    ``p = γ``: it lifts low-probability refinement tokens more than ``p`` itself would."""
    if not gamma > 0:
        raise ValueError(f"the shaping constant gamma must be > 0, got {gamma}")
    p = torch.exp(torch.clamp(log_prob, max=0.0))
    return p / (p + gamma)


def on_off_policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    mask: Tensor,
    off_policy: Tensor,
    *,
    gamma: float = 0.1,
    clip: bool = True,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    agg: AggMode = "token-mean",
) -> tuple[Tensor, dict[str, float]]:
    """Critique-GRPO's loss on a group mixing on-policy samples and one off-policy refinement:

        ℓ_j = −A · f(π_θ(y_j))              on off-policy tokens (``off_policy`` 1): ``policy_shaping``,
                                             no ratio to an old policy, no clipping
        ℓ_j = ppo_clip_loss's token loss     on the others (``clip=False``: −A·r, the paper's recipe
                                             ``loss_remove_clip``)

    aggregated together with ``agg_loss`` over ``mask`` (the paper's recipe: ``seq-mean-token-sum-norm``
    with ``scale`` = the response length, i.e. ``Σ ℓ / T`` over the batch — ``"token-sum"`` divided by
    T here gives the same). Metrics: ``off_policy_prob`` (mean π_θ on off-policy tokens) and
    ``ppo_clip_loss``'s on the on-policy tokens."""
    off = off_policy.bool() & mask.bool()
    on = ~off_policy.bool() & mask.bool()
    if clip:
        on_losses, metrics = _ppo_token_losses(log_prob, old_log_prob, advantages, on, clip_low, clip_high, clip_c)
    else:
        on_losses = -advantages * torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
        metrics = {"clipfrac": 0.0, "clipfrac_lower": 0.0,
                   "ppo_kl": float(masked_mean((old_log_prob - log_prob).detach(), on))}
    off_losses = -advantages * policy_shaping(log_prob, gamma)
    losses = torch.where(off, off_losses, on_losses)
    metrics["off_policy_prob"] = float(masked_mean(torch.exp(log_prob).detach(), off)) if bool(off.any()) else 0.0
    return agg_loss(losses, mask, agg), metrics


def kl_penalty(log_prob: Tensor, ref_log_prob: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from sampled tokens (Schulman 2020, "Approximating KL"):

    * ``k1`` / ``kl``: ``log π − log π_ref``; ``abs``: its absolute value;
    * ``k2`` / ``mse``: ``½ (log π − log π_ref)²``;
    * ``k3`` / ``low_var_kl``: ``exp(d) − d − 1`` with ``d = clamp(log π_ref − log π, −20, 20)``, clamped to
      [−10, 10] (verl's ``low_var_kl``).
    """
    if kind in ("k1", "kl"):
        return log_prob - ref_log_prob
    if kind == "abs":
        return (log_prob - ref_log_prob).abs()
    if kind in ("k2", "mse"):
        return 0.5 * (log_prob - ref_log_prob).square()
    if kind in ("k3", "low_var_kl"):
        d = torch.clamp(ref_log_prob - log_prob, -20.0, 20.0)
        return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KLKind.__args__}")  # type: ignore[attr-defined]
