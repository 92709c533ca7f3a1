"""Trainer tensors → ``Rollouts``.

verl lays a multi-turn response out as ``|gen|tool|gen|pad|`` with ``response_mask`` 1 on generated
tokens and 0 on tool output and padding. Each run of ``mask == 1`` is one step (model turn); the
group is the prompt's uid. Tool calls inside a step can be located by start / end token-id patterns
(e.g. the ids of ``<tool_call>`` and ``</tool_call>``). Per-step rewards, decision-point keys (or the
anchor observations they are hashed from) and rollout-tree ids can be passed in as the trainer holds
them. Everything is vectorized over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stepcredit import segments
from stepcredit.errors import RolloutError
from stepcredit.rollouts import Rollouts, StepKind, Texts, text_keys


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
    step_rewards: Tensor | None = None,
    state: Tensor | Sequence[int] | np.ndarray | None = None,
    anchor_observations: Sequence[str] | None = None,
    tree: Sequence[object] | np.ndarray | Tensor | None = None,
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
        step_rewards: intermediate rewards (the ``reward`` column), either
            ``[S]``: one per step, steps numbered row-major in the order their runs of
            ``response_mask == 1`` appear; or ``(N, T)`` token-level (verl puts a turn's reward on the
            turn's last token): a step's reward is the sum over its span's tokens, and every token
            outside a step must be 0. Must be finite. Keep them out of ``outcome`` /
            ``token_level_rewards`` (estimators add the two; e.g. GiGPO's episode return is
            ``outcome + Σ step rewards``). Default 0.
        state: ``[S]`` integer decision-point keys (the ``state`` column; steps of one group with
            equal keys share a decision point, e.g. GiGPO's anchor state or a tree node).
        anchor_observations: instead of ``state``, the ``S`` observation strings each step acted on
            (GiGPO's anchor state); equal strings within a group get equal keys, equal strings in
            different groups do not (hashed with ``text_keys``). At most one of ``state`` and
            ``anchor_observations``; without either every step is its own decision point.
        tree: ``[N]`` rollout-tree id of each row (ints or strings, any hashable), numbered densely in
            order of first appearance (the ``tree`` column; trees are told apart within a group).
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
    reward = None if step_rewards is None else _step_rewards(step_rewards, mask, rows, starts, ends, ids)
    keys = _step_states(state, anchor_observations, group, rows)
    tree_ids = None if tree is None else _tree_ids(tree, n).to(device)
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
        tree=tree_ids,
        **{name: col for name, col in (("reward", reward), ("state", keys)) if col is not None},
        texts=Texts.create(n, len(names), s, c, ids=ids, group_names=names,
                           **_anchor_texts(anchor_observations, step_offsets)),
    )


_STEPS = "one per step: runs of response_mask == 1"


def _step_rewards(
    values: Tensor, mask: Tensor, rows: Tensor, starts: Tensor, ends: Tensor, ids: Sequence[str] | None
) -> Tensor:
    """``[S]`` float32 step rewards from ``[S]`` per-step or ``(N, T)`` per-token values."""
    s = rows.numel()
    values = torch.as_tensor(values, device=mask.device)
    if not values.is_floating_point():
        values = values.to(torch.float32)
    if values.dim() == 1:
        if values.numel() != s:
            raise RolloutError(f"expected {s} step rewards ({_STEPS}), got {values.numel()}", field="step_rewards")
    elif values.dim() == 2:
        if values.shape != mask.shape:
            raise RolloutError(
                f"expected token-level step rewards of shape {tuple(mask.shape)} (the response_mask's), "
                f"got {tuple(values.shape)}",
                field="step_rewards",
            )
    else:
        raise RolloutError(
            f"expected [S] per-step or (N, T) per-token step rewards, got shape {tuple(values.shape)}",
            field="step_rewards",
        )
    bad = torch.nonzero(~torch.isfinite(values))
    if bad.numel():
        at = f"step {int(bad[0, 0])}" if values.dim() == 1 else f"token {int(bad[0, 1])} of row {int(bad[0, 0])}"
        raise RolloutError(f"expected finite rewards, got {float(values[tuple(bad[0])])} at {at}", field="step_rewards")
    if values.dim() == 1:
        return values.to(torch.float32)
    step_of = segments.span_index_map(starts, ends, rows, (mask.shape[0], mask.shape[1]))
    inside = step_of >= 0
    stray = torch.nonzero((values != 0) & ~inside)
    if stray.numel():
        row, tok = int(stray[0, 0]), int(stray[0, 1])
        raise RolloutError(
            f"token-level step reward {float(values[row, tok])} at token {tok} lies outside every step "
            "(response_mask == 0); put each step's reward on one of its own tokens",
            trajectory=ids[row] if ids is not None else str(row),
            field="step_rewards",
        )
    return segments.segment_sum(values[inside], step_of[inside], s).to(torch.float32)


def _step_states(
    state: Tensor | Sequence[int] | np.ndarray | None,
    anchor_observations: Sequence[str] | None,
    group: Tensor,
    rows: Tensor,
) -> Tensor | None:
    """``[S]`` decision-point keys given directly or hashed from anchor observations (``None``: default)."""
    s = rows.numel()
    if state is not None and anchor_observations is not None:
        raise RolloutError("give at most one of state and anchor_observations", field="state")
    if state is not None:
        shape = tuple(state.shape) if isinstance(state, Tensor) else np.shape(state)
        if len(shape) != 1 or shape[0] != s:
            raise RolloutError(f"expected {s} state keys ({_STEPS}), got shape {shape}", field="state")
        return state if isinstance(state, Tensor) else torch.as_tensor(np.asarray(state))
    if anchor_observations is None:
        return None
    if isinstance(anchor_observations, (str, bytes)):
        raise RolloutError(
            "expected a sequence of strings, one per step, got a single string", field="anchor_observations"
        )
    texts = list(anchor_observations)
    if len(texts) != s:
        raise RolloutError(
            f"expected {s} anchor observations ({_STEPS}), got {len(texts)}", field="anchor_observations"
        )
    odd = next((k for k, t in enumerate(texts) if not isinstance(t, str)), None)
    if odd is not None:
        raise RolloutError(
            f"expected strings, got {type(texts[odd]).__name__} at step {odd}", field="anchor_observations"
        )
    return text_keys(texts, group[rows].tolist()).to(group.device)


def _anchor_texts(anchor_observations: Sequence[str] | None, step_offsets: Tensor) -> dict[str, list[str]]:
    """The texts ``anchor_observations(rollouts)`` reads a step's anchor from: a row's first step acted
    on the prompt, a later step on the previous step's observation (so ``gigpo(similarity=...)`` sees
    the anchors, not blanks). Called after ``_step_states`` checked them."""
    if anchor_observations is None:
        return {}
    texts = list(anchor_observations)
    off = step_offsets.tolist()
    prompt = [texts[off[i]] if off[i + 1] > off[i] else "" for i in range(len(off) - 1)]
    observation = [""] * len(texts)
    for i in range(len(off) - 1):
        observation[off[i] : off[i + 1] - 1] = texts[off[i] + 1 : off[i + 1]]
    return {"prompt": prompt, "observation": observation}


def _tree_ids(tree: Sequence[object] | np.ndarray | Tensor, n: int) -> Tensor:
    try:
        ids, _ = dense_groups(tree)
    except RolloutError as err:
        raise RolloutError(f"expected {n} tree ids (one per row): {err.reason}", field="tree") from None
    if ids.numel() != n:
        raise RolloutError(f"expected {n} tree ids (one per row), got {ids.numel()}", field="tree")
    return ids


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

    def who(row: int) -> str:
        return ids[row] if ids is not None else str(row)

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
