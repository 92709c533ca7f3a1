"""DRO's Reasoning Reflection Reward (R3) and its variance filter, as pure tensor functions.

DRO scores a rollout's reasoning by how well it predicts the *reference* answer: the trainer
teacher-forces ``[q ; ĉ_i ; y]`` for every rollout i of a task and reads off the log-probability of
each reference token. The reference tokens whose log-probability varies across the group's
rollouts ("reasoning-reflective" tokens) are the ones that say something about the reasoning, so
they get the weight. Xu et al. 2025, arXiv:2506.13351 (v1 §4.1–4.2; our spec with every quoted
formula and every ambiguity: ``docs/methods/dro_r3.md``).

Inputs, as a trainer computes them with the model in the loop (N rollouts, references padded to L):

* ``ref_logprobs [N, L]`` float: ``log π(y_j | q, ĉ_i, y_<j)``, reference token j under rollout i's
  reasoning;
* ``ref_mask [N, L]`` bool: which reference positions are real. All rollouts of a group score the
  same reference, so they share one mask (checked); groups may have references of different lengths;
* ``group [N]`` int: dense task ids ``0 … G−1``;
* ``baseline_logprobs [N, L]`` (optional): ``log π(y_j | q, c_masked, y_<j)``, v1's masked-CoT
  correction (b).

Values at masked positions never matter (NaN or ``-inf`` padding there is fine). Statistics are
computed in float64 through ``stepcredit.core.segments``; results have the input's dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from stepcredit.core import segments

__all__ = ["Weighting", "group_reference_mask", "r3_filter", "r3_reward", "r3_weights", "reflectivity"]

Weighting = Literal["linear", "softmax", "uniform"]


def _check_logprobs(values: Tensor, mask: Tensor, name: str) -> None:
    """Shape/dtype of ``values`` against ``mask``; finite and ≤ 0 at real positions (error names the first bad one)."""
    if not isinstance(values, Tensor) or not values.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {getattr(values, 'dtype', type(values))}")
    if values.shape != mask.shape:
        raise ValueError(f"{name} has shape {tuple(values.shape)}, ref_mask has {tuple(mask.shape)}: they must match")
    if values.device != mask.device:
        raise ValueError(f"{name} is on {values.device}, ref_mask on {mask.device}")
    for bad, what in (
        (mask & ~torch.isfinite(values), "is not finite"),
        (mask & (values > 0), "is positive, not a log-probability"),
    ):
        if bool(bad.any()):
            i, j = (int(k) for k in torch.nonzero(bad)[0])
            raise ValueError(
                f"{name}[{i}, {j}] = {float(values[i, j])} {what} (trajectory {i}, reference position {j}, "
                f"a real position of ref_mask)"
            )


def _check_layout(ref_mask: Tensor, group: Tensor, num_groups: int | None) -> int:
    """Shapes and dtypes of the mask and the group ids; returns the number of groups."""
    if not isinstance(ref_mask, Tensor) or ref_mask.dtype != torch.bool or ref_mask.dim() != 2:
        raise ValueError(
            f"ref_mask must be a 2-D bool tensor [N, L], got {getattr(ref_mask, 'dtype', type(ref_mask))} "
            f"of shape {tuple(getattr(ref_mask, 'shape', ()))}"
        )
    n = ref_mask.shape[0]
    if not isinstance(group, Tensor) or group.dtype.is_floating_point or group.dtype.is_complex:
        raise ValueError(f"group must be an integer tensor [N], got {getattr(group, 'dtype', type(group))}")
    if group.dtype == torch.bool or group.shape != (n,):
        raise ValueError(f"group must be an integer tensor of shape ({n},), got {group.dtype} {tuple(group.shape)}")
    if group.device != ref_mask.device:
        raise ValueError(f"group is on {group.device}, ref_mask on {ref_mask.device}")
    top = int(group.max()) + 1 if n else 0
    if num_groups is None:
        num_groups = top
    if num_groups < 0:
        raise ValueError(f"num_groups must be >= 0, got {num_groups}")
    if n and (int(group.min()) < 0 or top > num_groups):
        k = int(torch.nonzero((group < 0) | (group >= num_groups))[0, 0])
        raise ValueError(f"group[{k}] = {int(group[k])} is out of range: group ids must lie in [0, {num_groups})")
    return num_groups


def _flat_index(group: Tensor, length: int) -> Tensor:
    """``[N, L]`` id of the (group, reference position) cell of every entry: ``g · L + j``."""
    return group.to(torch.int64)[:, None] * length + torch.arange(length, device=group.device)


def _group_mask(ref_mask: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``[G, L]`` reference mask of each group, after checking that its rollouts agree on it."""
    length = ref_mask.shape[1]
    flat = _flat_index(group, length)
    real = segments.segment_count(flat[ref_mask], num_groups * length).view(num_groups, length)
    size = segments.segment_count(group.to(torch.int64), num_groups)
    split = (real > 0) & (real < size[:, None])
    if bool(split.any()):
        g, j = (int(k) for k in torch.nonzero(split)[0])
        members = group == g
        has = int(torch.nonzero(members & ref_mask[:, j])[0, 0])
        lacks = int(torch.nonzero(members & ~ref_mask[:, j])[0, 0])
        raise ValueError(
            f"group {g}: its rollouts do not share one reference mask (reference position {j} is real for "
            f"trajectory {has} but masked for trajectory {lacks}); all rollouts of a group score the same reference"
        )
    return real > 0


def _sigma(ref_logprobs: Tensor, ref_mask: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``[G, L]`` float64 population std per (group, position); 0 at masked positions and where the
    group's log-probs agree to within ``segments.CONSTANT_RTOL`` (summation-order noise, not spread)."""
    length = ref_logprobs.shape[1]
    flat = _flat_index(group, length)
    _, _, std, constant = segments.group_stats(
        ref_logprobs[ref_mask], flat[ref_mask], num_groups * length, unbiased=False
    )
    return torch.where(constant, torch.zeros_like(std), std).view(num_groups, length)


def group_reference_mask(ref_mask: Tensor, group: Tensor, num_groups: int | None = None) -> Tensor:
    """``[G, L]`` bool: the reference mask each group's rollouts share (the ``mask`` of ``r3_weights``).

    Raises ``ValueError`` naming the group (and two of its trajectories) when its rollouts disagree on
    which reference positions are real. A group id without rollouts gets an all-False row.
    """
    num_groups = _check_layout(ref_mask, group, num_groups)
    return _group_mask(ref_mask, group, num_groups)


def reflectivity(ref_logprobs: Tensor, ref_mask: Tensor, group: Tensor, num_groups: int | None = None) -> Tensor:
    """``[G, L]`` token reflectivity σ_j: how much reference token j's log-probability varies with the
    reasoning, across the rollouts of a group.

        σ_{g,j} = sqrt( (1/n_g) Σ_{i ∈ g} (log p_ij − μ_{g,j})² ),   μ_{g,j} = (1/n_g) Σ_{i ∈ g} log p_ij

    with ``log p_ij = log π(y_j | q, ĉ_i, y_<j)``. Paper (v1 §4.1.2): "tokens ... that exhibit high
    standard deviation in their log-probabilities across 16 distinct CoT traces". Our choices where
    v1 is silent (``docs/methods/dro_r3.md``): the *population* std (ddof 0, so a group of one
    rollout has σ = 0 rather than undefined), of log-probabilities (v1), not of probabilities and not
    the variance (v3's abstract wording); centred two-pass form for stability. σ is exactly 0 at
    masked positions, for groups without rollouts, and where the group's log-probs agree to within
    ``segments.CONSTANT_RTOL`` of their magnitude (rounding noise of the mean must not read as spread).

    ``num_groups``: G (default ``group.max() + 1``). Xu et al. 2025, arXiv:2506.13351.
    """
    num_groups = _check_layout(ref_mask, group, num_groups)
    _check_logprobs(ref_logprobs, ref_mask, "ref_logprobs")
    _group_mask(ref_mask, group, num_groups)
    return _sigma(ref_logprobs, ref_mask, group, num_groups).to(ref_logprobs.dtype)


def r3_weights(sigma: Tensor, mask: Tensor, *, weighting: Weighting = "linear", temperature: float = 1.0) -> Tensor:
    """``[G, L]`` token weights w_Δ(σ_j) of each group's reference tokens.

    Paper (v1 §4.1.2): "w_Δ(σ_j) assigns greater weight to tokens with higher standard deviation σ_j"
    — and nothing more: v1 gives no functional form, normalisation or temperature
    (``docs/methods/dro_r3.md``). **The forms below are our choices**, each normalised so
    that a group's weights sum to 1 over its real positions (R3 is then a weighted *mean* of log-probs):

        linear  (default):  w_j = σ_j / Σ_k σ_k          (uniform 1/L_g when every σ_k is 0:
                                                          no token tells the rollouts apart)
        softmax:            w_j = exp(σ_j/τ) / Σ_k exp(σ_k/τ)
        uniform:            w_j = 1 / L_g                 (no reflectivity: DRO-Aggr / L_g, the baseline)

    sums over the group's real positions k (``mask``), L_g their number. ``linear`` gives a token that
    never varies weight 0; ``softmax`` never does (τ → 0 tends to the argmax token, τ → ∞ to uniform).
    Masked positions, and every position of a group without real ones, get weight 0.

    Args:
        sigma: ``[G, L]`` reflectivity (``reflectivity``); values at masked positions are ignored.
        mask: ``[G, L]`` bool, the real reference positions of each group (``group_reference_mask``).
        weighting: ``"linear"``, ``"softmax"`` or ``"uniform"``.
        temperature: τ of ``softmax`` (> 0; our default 1.0, the paper gives none).
    """
    if weighting not in ("linear", "softmax", "uniform"):
        raise ValueError(f"weighting must be 'linear', 'softmax' or 'uniform', got {weighting!r}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a 2-D bool tensor [G, L], got {getattr(mask, 'dtype', type(mask))}")
    if not isinstance(sigma, Tensor) or not sigma.is_floating_point() or sigma.shape != mask.shape:
        raise ValueError(
            f"sigma must be a floating-point tensor of the mask's shape {tuple(mask.shape)}, got "
            f"{getattr(sigma, 'dtype', type(sigma))} {tuple(getattr(sigma, 'shape', ()))}"
        )
    bad = mask & ~(torch.isfinite(sigma) & (sigma >= 0))
    if bool(bad.any()):
        g, j = (int(k) for k in torch.nonzero(bad)[0])
        raise ValueError(f"sigma[{g}, {j}] = {float(sigma[g, j])}: a std must be finite and >= 0 (group {g})")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    s = torch.where(mask, sigma.double(), torch.zeros((), dtype=torch.float64, device=sigma.device))
    m = mask.double()
    count = m.sum(1, keepdim=True)
    uniform = m / count.clamp_min(1)  # all-masked rows: 0
    if weighting == "uniform":
        w = uniform
    elif weighting == "linear":
        total = s.sum(1, keepdim=True)
        w = torch.where(total > 0, s / total.clamp_min(torch.finfo(torch.float64).tiny), uniform)
    else:
        logits = torch.where(mask, s / temperature, torch.full_like(s, -math.inf))
        w = torch.where(mask, torch.softmax(logits, dim=1), torch.zeros_like(s))  # all-masked rows: NaN → 0
    return w.to(sigma.dtype)


def r3_reward(
    ref_logprobs: Tensor,
    ref_mask: Tensor,
    group: Tensor,
    *,
    num_groups: int | None = None,
    weighting: Weighting = "linear",
    temperature: float = 1.0,
    baseline_logprobs: Tensor | None = None,
) -> Tensor:
    """``[N]`` Reasoning Reflection Reward of each rollout.

        R3_i = Σ_j w_Δ(σ_j) · log π(y_j | q, ĉ_i, y_<j)                               (v1 §4.1.2)
        R3_i = Σ_j w_Δ(σ_j) · [log π(y_j | q, ĉ_i, y_<j) − log π(y_j | q, c_masked, y_<j)]   (v1 §4.1.3 (b))

    summed over the real reference positions j of rollout i's group; σ from ``reflectivity`` (on the
    uncorrected log-probs: v1 defines σ_j on log π(y_j | q, ĉ_i, y_<j)), w from ``r3_weights``.
    Paper: the weighted sum of log-probs, not probabilities (v1). Ours (``docs/methods/dro_r3.md``,
    the ambiguities): the form of w, normalised to sum 1, which makes R3 a weighted mean — a per-group scale
    of v1's sum that the std-normalised GRPO advantage does not see, but a mix with the length penalty
    does. ``baseline_logprobs`` is v1's masked-CoT correction (b), subtracted token by token; what
    "masked" means is the trainer's choice (v1 does not say). If it is the same for every rollout of a
    group it shifts the group's rewards by one constant and cancels in the advantage. v1's other
    correction (a), self-certainty propagation, is not implemented. A rollout whose reference has no
    real position gets 0. Xu et al. 2025, arXiv:2506.13351.

    Args:
        ref_logprobs: ``[N, L]`` log-probs of the reference tokens under each rollout's reasoning.
        ref_mask: ``[N, L]`` bool, real reference positions (shared within a group).
        group: ``[N]`` int group ids in ``[0, num_groups)``.
        num_groups: G (default ``group.max() + 1``).
        weighting, temperature: see ``r3_weights``.
        baseline_logprobs: ``[N, L]`` log-probs under a masked / empty reasoning, or None.
    """
    num_groups = _check_layout(ref_mask, group, num_groups)
    _check_logprobs(ref_logprobs, ref_mask, "ref_logprobs")
    if baseline_logprobs is not None:
        _check_logprobs(baseline_logprobs, ref_mask, "baseline_logprobs")
    mask = _group_mask(ref_mask, group, num_groups)
    sigma = _sigma(ref_logprobs, ref_mask, group, num_groups)
    w = r3_weights(sigma, mask, weighting=weighting, temperature=temperature)
    score = ref_logprobs.double()
    if baseline_logprobs is not None:
        score = score - baseline_logprobs.double()
    score = torch.where(ref_mask, score, torch.zeros_like(score))  # NaN / -inf padding must not leak
    return (w[group.to(torch.int64)] * score).sum(1).to(ref_logprobs.dtype)


def r3_filter(
    ref_logprobs: Tensor,
    ref_mask: Tensor,
    group: Tensor,
    *,
    num_groups: int | None = None,
    min_spread: float | None = None,
    keep_quantile: float | None = None,
) -> Tensor:
    """``[N]`` bool keep mask: DRO's variance filter on queries (stage 2 of v1 §4.2.2), per group.

        s_g = max_j σ_{g,j}      over the group's real reference positions (0 when it has none)

    ``min_spread``: keep groups with ``s_g ≥ min_spread``. ``keep_quantile`` q ∈ (0, 1]: rank the
    groups that have rollouts by s_g, descending, ties broken by the lower group id, and keep the first
    ``ceil(q · G')`` of them (G' non-empty groups; q · G' rounded to 9 decimals first, so 0.7 · 10
    keeps 7). Both given: a group must pass both. At least one must be given. A group of one rollout
    has σ = 0, so s = 0.

    Paper (v1 §4.2.2): "rank all prompts in descending order of max(σ_j) and remove a proportion of the
    lowest-ranked samples"; the proportion is not given (``docs/methods/dro_r3.md``). Ours:
    the threshold form, the tie rule, and applying it per batch to whole groups (v1 filters the
    training set in rounds, with a stage-1 rank filter and a 10% carry-over that are not implemented
    here). A trajectory-level mask rather than indices, so a trainer that expects every row back (verl)
    can zero the dropped rows. Xu et al. 2025, arXiv:2506.13351.
    """
    if min_spread is None and keep_quantile is None:
        raise ValueError("r3_filter needs min_spread, keep_quantile or both")
    if min_spread is not None and not (math.isfinite(min_spread) and min_spread >= 0):
        raise ValueError(f"min_spread must be finite and >= 0, got {min_spread}")
    if keep_quantile is not None and not (0 < keep_quantile <= 1):
        raise ValueError(f"keep_quantile must lie in (0, 1], got {keep_quantile}")
    num_groups = _check_layout(ref_mask, group, num_groups)
    _check_logprobs(ref_logprobs, ref_mask, "ref_logprobs")
    _group_mask(ref_mask, group, num_groups)
    sigma = _sigma(ref_logprobs, ref_mask, group, num_groups)
    spread = sigma.amax(1) if sigma.shape[1] else sigma.new_zeros(num_groups)  # σ ≥ 0, and 0 where masked
    keep = torch.ones(num_groups, dtype=torch.bool, device=ref_mask.device)
    if min_spread is not None:
        keep &= spread >= min_spread
    if keep_quantile is not None:
        present = segments.segment_count(group.to(torch.int64), num_groups) > 0
        ranked = torch.where(present, spread, torch.full_like(spread, -math.inf))
        order = torch.sort(ranked, descending=True, stable=True).indices  # stable: ties by group id
        top = math.ceil(round(keep_quantile * int(present.sum()), 9))
        chosen = torch.zeros_like(keep)
        chosen[order[:top]] = True
        keep &= chosen
    return keep[group.to(torch.int64)]
