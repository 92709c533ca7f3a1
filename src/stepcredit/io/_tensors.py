"""Trainer tensors → ``Rollouts``.

verl lays a multi-turn response out as ``|gen|tool|gen|pad|`` with ``response_mask`` 1 on generated
tokens and 0 on tool output and padding. Each run of ``mask == 1`` is one step (model turn); the
group is the prompt's uid. Tool calls inside a step can be located by start / end token-id patterns
(e.g. the ids of ``<tool_call>`` and ``</tool_call>``). Everything is vectorized over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stepcredit.errors import RolloutError
from stepcredit.rollouts import Rollouts, StepKind, Texts


def dense_groups(index: Sequence[object] | np.ndarray | Tensor) -> tuple[Tensor, list[str]]:
    """Dense group ids ``0..G-1`` in order of first appearance, and each group's name."""
    if isinstance(index, Tensor):
        index = index.cpu().numpy()
    arr = np.asarray(index)
    if arr.ndim != 1:
        raise RolloutError(f"expected a 1-D group index, got shape {arr.shape}", field="index")
    if arr.dtype == object:
        arr = arr.astype(str)
    uniq, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return torch.as_tensor(rank[inverse], dtype=torch.int64), [str(u) for u in uniq[order]]


def _pattern_starts(tokens: Tensor, pattern: Sequence[int]) -> Tensor:
    """``(N, T)`` bool: where ``pattern`` begins in each row."""
    n, t = tokens.shape
    length = len(pattern)
    hit = torch.zeros(n, t, dtype=torch.bool, device=tokens.device)
    if length == 0 or length > t:
        return hit
    windows = tokens.unfold(1, length, 1)  # (N, T-L+1, L)
    pat = torch.as_tensor(list(pattern), dtype=tokens.dtype, device=tokens.device)
    hit[:, : t - length + 1] = (windows == pat).all(-1)
    return hit


def from_trainer_tensors(
    response_mask: Tensor,
    index: Sequence[object] | np.ndarray | Tensor,
    *,
    outcome: Tensor | None = None,
    token_level_rewards: Tensor | None = None,
    responses: Tensor | None = None,
    tool_call_start: Sequence[int] | None = None,
    tool_call_end: Sequence[int] | None = None,
    ids: Sequence[str] | None = None,
) -> Rollouts:
    """Build ``Rollouts`` from a trainer batch.

    Args:
        response_mask: ``(N, T)``; 1 on model-generated tokens. Each run of ones is a step.
        index: group of each row (verl's ``uid`` object array, or ints).
        outcome: ``(N,)`` outcome rewards; or give ``token_level_rewards`` ``(N, T)`` and the outcome
            is their row sum (verl's convention). Exactly one of the two.
        responses, tool_call_start, tool_call_end: token ids ``(N, T)`` and the id patterns that open
            and close a tool call; each call becomes a call row with its token span, and the step
            holding it becomes a TOOL_CALL step. Calls must open and close inside one step.
        ids: trajectory ids (default ``"0".."N-1"``).
    """
    if response_mask.dim() != 2:
        raise RolloutError(f"expected shape (N, T), got {tuple(response_mask.shape)}", field="response_mask")
    n = response_mask.shape[0]
    if (outcome is None) == (token_level_rewards is None):
        raise RolloutError("give exactly one of outcome and token_level_rewards", field="outcome")
    if token_level_rewards is not None:
        if token_level_rewards.shape != response_mask.shape:
            raise RolloutError(
                f"expected shape {tuple(response_mask.shape)}, got {tuple(token_level_rewards.shape)}",
                field="token_level_rewards",
            )
        outcome = token_level_rewards.sum(-1)
    assert outcome is not None
    group, names = dense_groups(index)
    if group.numel() != n:
        raise RolloutError(f"expected {n} group entries (one per row), got {group.numel()}", field="index")
    device = response_mask.device
    group = group.to(device)
    mask = response_mask != 0
    edges = torch.diff(F.pad(mask.to(torch.int8), (1, 1)), dim=1)
    # row-major, so each row alternates run start (+1) and run end (−1)
    edge_rows, edge_cols = torch.nonzero(edges, as_tuple=True)
    rows, starts, ends = edge_rows[0::2], edge_cols[0::2], edge_cols[1::2]
    s = rows.numel()
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    step_offsets = torch.cat([zero, torch.cumsum(torch.bincount(rows, minlength=n), 0)])
    call_offsets = torch.zeros(s + 1, dtype=torch.int64, device=device)
    call_start = call_end = None
    kind = torch.full((s,), int(StepKind.REASON), dtype=torch.int8, device=device)
    if (tool_call_start is None) != (tool_call_end is None):
        raise RolloutError("give both tool_call_start and tool_call_end patterns", field="tool_call_start")
    if tool_call_start is not None and tool_call_end is not None:
        if responses is None or responses.shape != response_mask.shape:
            raise RolloutError("tool-call patterns need responses (N, T) token ids", field="responses")
        call_step, call_start, call_end = _find_calls(
            responses, mask, rows, starts, ends, tool_call_start, tool_call_end, ids
        )
        counts = torch.bincount(call_step, minlength=s)
        call_offsets = torch.cat([zero, torch.cumsum(counts, 0)])
        kind = torch.where(counts > 0, torch.full_like(kind, int(StepKind.TOOL_CALL)), kind)
    last = step_offsets[1:][step_offsets[1:] > step_offsets[:-1]] - 1
    last_kind = kind[last]
    kind[last] = torch.where(
        last_kind == int(StepKind.REASON), torch.full_like(last_kind, int(StepKind.ANSWER)), last_kind
    )
    c = int(call_offsets[-1])
    return Rollouts(
        group=group,
        outcome=outcome.to(torch.float32),
        step_offsets=step_offsets,
        kind=kind,
        call_offsets=call_offsets,
        response_mask=mask,
        step_token_start=starts,
        step_token_end=ends,
        call_token_start=call_start,
        call_token_end=call_end,
        texts=Texts.create(n, len(names), s, c, ids=ids, group_names=names),
    )


def _find_calls(
    responses: Tensor,
    mask: Tensor,
    step_rows: Tensor,
    step_starts: Tensor,
    step_ends: Tensor,
    open_ids: Sequence[int],
    close_ids: Sequence[int],
    ids: Sequence[str] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    t = responses.shape[1]
    who = lambda row: ids[row] if ids is not None else str(row)  # noqa: E731
    opens = torch.nonzero(_pattern_starts(responses, open_ids) & mask)
    closes = torch.nonzero(_pattern_starts(responses, close_ids) & mask)
    flat_open = opens[:, 0] * t + opens[:, 1]
    flat_close = closes[:, 0] * t + closes[:, 1]
    # each call closes at the first close pattern after its open pattern
    pos = torch.searchsorted(flat_close, flat_open + len(open_ids))
    missing = pos >= flat_close.numel()
    pos_c = pos.clamp_max(max(flat_close.numel() - 1, 0))
    if flat_close.numel():
        missing |= closes[pos_c, 0] != opens[:, 0]
    if bool(missing.any()):
        i = int(torch.nonzero(missing)[0, 0])
        raise RolloutError(
            f"tool call opened at token {int(opens[i, 1])} is never closed",
            trajectory=who(int(opens[i, 0])),
            field="responses",
        )
    if pos.numel() != torch.unique(pos).numel() or pos.numel() != flat_close.numel():
        dup = torch.ones(flat_close.numel(), dtype=torch.int64, device=pos.device)
        dup.index_add_(0, pos, -torch.ones_like(pos))
        k = int(torch.nonzero(dup != 0)[0, 0])
        raise RolloutError(
            f"tool-call close pattern at token {int(closes[k, 1])} does not close exactly one call "
            "(nested or unopened call)",
            trajectory=who(int(closes[k, 0])),
            field="responses",
        )
    call_start = opens[:, 1]
    call_end = closes[pos, 1] + len(close_ids)
    flat_step = step_rows * t + step_starts
    call_step = torch.searchsorted(flat_step, flat_open, right=True) - 1
    outside = call_end > step_ends[call_step]
    if bool(outside.any()):
        i = int(torch.nonzero(outside)[0, 0])
        raise RolloutError(
            f"tool call [{int(call_start[i])}, {int(call_end[i])}) runs past the end of its step "
            f"({int(step_ends[call_step[i]])}): calls must open and close inside one generated turn",
            trajectory=who(int(opens[i, 0])),
            field="responses",
        )
    return call_step, call_start, call_end
