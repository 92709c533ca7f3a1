"""Teacher-forced log-probabilities of token sequences under a policy's model: the RL update's forward
pass, the warm start's cross-entropy, and the scoring passes of feedback methods (OPD's hinted
teacher, DRO's reference answer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from stepcredit.core import segments

__all__ = ["entropy_from_logits", "padded", "score_tokens", "sequence_logprobs"]


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution per position: ``logsumexp(z) − Σ softmax(z)·z``."""
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def sequence_logprobs(
    model: Any,
    prompt_ids: list[list[int]],
    response_ids: Tensor,
    temperature: float,
    *,
    pad_id: int,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``log π(response token | prompt, earlier response)`` at ``temperature``, and the entropy of each
    next-token distribution, both ``(N, T)`` aligned with ``response_ids`` (garbage on padding: mask it).

    Each row is ``prompt + response`` right-padded; logits at position ``P_i − 1 + t`` predict response
    token ``t``. With ``mask`` (N, T) the columns after its last true one are not computed (0 there):
    a minibatch of short responses does not pay for the batch's longest."""
    device = next(model.parameters()).device
    n, full = response_ids.shape
    t = full
    if mask is not None:
        used = torch.nonzero(mask.any(dim=0))
        t = int(used.max()) + 1 if used.numel() else 1
    response_ids = response_ids[:, :t]
    lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    width = int(lengths.max()) + t
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    # prompts: one flat copy scattered to (row, position within the row); responses right after them
    rows = segments.segment_ids(torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]))
    cols = segments.ranges(torch.zeros_like(lengths), lengths)
    ids[rows, cols] = torch.tensor([token for p in prompt_ids for token in p], dtype=torch.long)
    ids.scatter_(1, lengths[:, None] + torch.arange(t)[None, :], response_ids)
    ids = ids.to(device)
    attention = torch.ones_like(ids)
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    if temperature > 0:
        logits = logits / temperature
    positions = (lengths[:, None] - 1 + torch.arange(t)[None, :]).to(device)  # (N, t)
    picked = logits.gather(1, positions[:, :, None].expand(n, t, logits.shape[-1]))  # (N, t, V)
    logp = torch.log_softmax(picked, dim=-1).gather(-1, response_ids.to(device)[:, :, None]).squeeze(-1)
    entropy = entropy_from_logits(picked.detach())
    if t < full:
        logp = torch.nn.functional.pad(logp, (0, full - t))
        entropy = torch.nn.functional.pad(entropy, (0, full - t))
    return logp, entropy


def padded(token_lists: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Token lists as right-padded ``(N, W)`` ids and their mask, placed in one scatter."""
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.int64)
    w = max(int(lengths.max()) if lengths.numel() else 0, width or 0)
    ids = torch.full((len(token_lists), w), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(token_lists), w), dtype=torch.bool)
    rows = segments.segment_ids(torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]))
    cols = segments.ranges(torch.zeros_like(lengths), lengths)
    ids[rows, cols] = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.int64)
    mask[rows, cols] = True
    return ids, mask


def score_tokens(policy: Any, contexts: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]], temperature: float,
                 chunk: int = 64) -> tuple[Tensor, Tensor]:
    """``log π(token_j | context, tokens_<j)`` of every (context, tokens) pair with the policy's model,
    without gradient, ``chunk`` pairs per forward pass: ``(N, W)`` float32 on the CPU and its mask."""
    ids, mask = padded(tokens, policy.format.pad_id)
    parts = []
    with torch.no_grad():
        for lo in range(0, len(tokens), chunk):
            sl = slice(lo, lo + chunk)
            logp, _ = sequence_logprobs(policy.model, [list(c) for c in contexts[sl]], ids[sl], temperature,
                                        pad_id=policy.format.pad_id, mask=mask[sl])
            parts.append(logp.float().cpu())
    return (torch.cat(parts) if parts else torch.zeros(ids.shape)), mask
