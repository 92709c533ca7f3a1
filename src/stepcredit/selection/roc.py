"""GRPO-RoC (rStar2-Agent): down-sample an oversampled group, keeping the cleanest successes."""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import Tensor

from stepcredit.core import TOOL_ERROR, Rollouts, segments
from stepcredit.core.registry import Count, Positive, PositiveInt, Seed, register
from stepcredit.views import trajectory_actions

ANSWER_BLOCK = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def tool_error_penalty(rollouts: Rollouts) -> Tensor:
    """``[N]``: the fraction of a trajectory's tool calls that errored; 0.5 when it made no call."""
    r = rollouts
    call_traj = r.call_traj
    errors = segments.segment_sum((r.call_ok == TOOL_ERROR).double(), call_traj, r.num_trajectories)
    calls = r.calls_per_trajectory.double()
    return torch.where(calls > 0, errors / calls.clamp_min(1), torch.full_like(calls, 0.5))


def answer_format_penalty(rollouts: Rollouts) -> Tensor:
    """``[N]``: rStar2-Agent's answer-format penalty — 1 when ``<answer>`` tags are missing or
    unbalanced or there is no assistant turn, else min((#answer blocks − 1) / #turns, 1)."""
    out = []
    turns = rollouts.steps_per_trajectory.tolist()
    for text, n in zip(trajectory_actions(rollouts), turns, strict=True):
        closed = len(ANSWER_BLOCK.findall(text))
        missing = "<answer>" not in text or "</answer>" not in text
        if missing or text.count("<answer>") != closed or text.count("</answer>") != closed or n == 0:
            out.append(1.0)
        else:
            out.append(min((closed - 1) / n, 1.0))
    return torch.tensor(out, dtype=torch.float64, device=rollouts.device)


def _rank_within(segment: Tensor, key: Tensor, num_segments: int) -> Tensor:
    """Rank (0-based) of every row within its segment when ordered by ``key`` (ties: batch order)."""
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]  # by segment, then key
    seg_sorted = segment[order]
    pos = torch.arange(order.numel(), device=key.device)
    start = segments.segment_first(seg_sorted, num_segments)
    rank = torch.empty_like(order)
    rank[order] = pos - start[seg_sorted]
    return rank


@register("selection")
def resample_on_correct(
    rollouts: Rollouts,
    *,
    keep: PositiveInt = 8,
    min_negatives: Count = 2,
    min_positives: Count = 2,
    drop_equal: bool = True,
    error_penalty: bool = True,
    format_penalty: Literal["none", "answer_tags"] = "none",
    mode: Literal["top_k", "weighted"] = "top_k",
    temperature: Positive = 1.0,
    seed: Seed = 0,
) -> Tensor:
    """Resample-on-Correct: from each oversampled group keep ``keep`` rollouts — failures uniformly at
    random, successes with the fewest tool errors and format problems.

    Per group of n (positives: outcome > 0, negatives: outcome ≤ 0), as ``roc.py::resample_of_correct``:
    * n < keep: the group is dropped (not trained); n = keep: kept whole; groups whose outcomes are all
      equal are dropped first (``drop_equal``, ``reject_equal_reward``);
    * quotas z = round(#neg · keep / n), p = round(#pos · keep / n) (half to even, as Python); when both
      are under their floors the group is kept whole; else z is raised to min(min_negatives, #neg)
      (p = keep − z) and then p to min(min_positives, #pos) (z = keep − p);
    * negatives: a uniform random subset (seeded; the reference takes the first z of i.i.d. rollouts);
    * positives: by penalty = tool-error fraction (0.5 without tool calls; ``error_penalty``) +
      answer-format penalty (``format_penalty="answer_tags"``), lowest first (``mode="top_k"``, the
      released code) or sampled without replacement with P ∝ exp(−penalty / temperature)
      (``"weighted"``, the paper's description; the exact distribution is not given).
    Where a quota exceeds what the group has, fewer than ``keep`` are kept. Returns indices in batch
    order. Shang et al. 2025 (rStar2-Agent), arXiv:2508.20722.
    """
    if min_negatives + min_positives > keep:
        raise ValueError(
            f"resample_on_correct needs min_negatives + min_positives <= keep, got "
            f"{min_negatives} + {min_positives} > {keep}"
        )
    r = rollouts
    n_groups = r.num_groups
    positive = r.outcome > 0
    size = segments.segment_count(r.group, n_groups)
    pos = segments.segment_sum(positive.long(), r.group, n_groups)
    neg = size - pos
    zq = torch.round(neg.double() * keep / size.clamp_min(1).double()).long()
    pq = torch.round(pos.double() * keep / size.clamp_min(1).double()).long()
    whole = (size == keep) | ((size > keep) & (zq < min_negatives) & (pq < min_positives))
    raise_z = zq <= torch.clamp(neg, max=min_negatives)
    zq = torch.where(raise_z, torch.clamp(neg, max=min_negatives), zq)
    pq = torch.where(raise_z, keep - zq, pq)
    raise_p = pq <= torch.clamp(pos, max=min_positives)
    pq = torch.where(raise_p, torch.clamp(pos, max=min_positives), pq)
    zq = torch.where(raise_p, keep - pq, zq)
    live = size >= keep
    if drop_equal:
        lo, hi = segments.segment_min_max(r.outcome, r.group, n_groups)
        live &= hi > lo
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand(r.num_trajectories, generator=gen, dtype=torch.float64).to(r.device)
    penalty = torch.zeros(r.num_trajectories, dtype=torch.float64, device=r.device)
    if error_penalty:
        penalty += tool_error_penalty(r)
    if format_penalty == "answer_tags":
        penalty += answer_format_penalty(r)
    if mode == "weighted":  # Gumbel-top-k: sampling without replacement with P ∝ exp(−penalty / T)
        gumbel = -torch.log(-torch.log(noise.clamp(1e-300, 1 - 1e-16)))
        pos_key = penalty / temperature - gumbel
    else:
        pos_key = penalty
    key = torch.where(positive, pos_key, noise)
    rank = _rank_within(r.group * 2 + positive.long(), key, 2 * n_groups)
    quota = torch.where(positive, pq[r.group], zq[r.group])
    chosen = live[r.group] & (whole[r.group] | (rank < quota))
    return torch.nonzero(chosen).squeeze(1)
