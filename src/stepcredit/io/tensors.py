"""Trainer tensors → ``Rollouts``.

verl lays a multi-turn response out as ``|gen|tool|gen|pad|`` with ``response_mask`` 1 on generated
tokens and 0 on tool output and padding. Each run of ``mask == 1`` is one step (model turn); the
group is the prompt's uid. Tool calls inside a step can be located by start / end token-id patterns
(e.g. the ids of ``<tool_call>`` and ``</tool_call>``). Per-step rewards, decision-point keys (or the
anchor observations they are hashed from) and rollout-tree ids can be passed in as the trainer holds
them. Everything is vectorized over the batch.

This is the path a trainer pays on every batch, so it reads each ``(N, T)`` input once: on the CPU,
blocks of rows go through numpy (the mask, its runs and the tool-call markers in one pass per block),
uid strings are numbered by hashing, and the batch is built
with ``Rollouts.trusted``: its step spans are the mask's runs, so the ``O(N·T)`` comparison of the two
is skipped while every other check runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

from stepcredit.core import Rollouts, StepKind, Texts, segments, text_keys
from stepcredit.core.errors import RolloutError


def dense_groups(index: Sequence[object] | np.ndarray | Tensor) -> tuple[Tensor, list[str]]:
    """Dense group ids ``0..G-1`` in order of first appearance, and each group's name."""
    group, names = _dense_groups(index)
    return group, names.to_pylist() if isinstance(names, pa.Array) else names


def _dense_groups(index: Sequence[object] | np.ndarray | Tensor) -> tuple[Tensor, pa.Array | list[str]]:
    """``dense_groups`` with the names as an Arrow array where they come from the hashed fast path."""
    if isinstance(index, Tensor):
        index = index.cpu().numpy()
    arr = np.asarray(index)
    if arr.ndim != 1:
        raise RolloutError(f"expected a 1-D group index, got shape {arr.shape}", field="index")
    fast = _string_codes(arr)
    return fast if fast is not None else _sorted_groups(arr)


def _as_tensor(value: Any, field: str) -> Tensor:
    """A tensor argument given as a tensor, or as a numpy array or nested list of numbers."""
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RolloutError(f"expected a tensor (or an array of numbers), got {type(value).__name__} ({exc})",
                           field=field) from None


def _object_groups(arr: np.ndarray) -> tuple[Tensor, list[str]]:
    """Group ids of an object array, keyed by value *and* type in order of first appearance (``1`` and
    ``"1"``, ``b"a"`` and ``"a"``, ``"a\0"`` and ``"a"`` are different groups); names are ``str`` of the
    ids, and two different ids whose names print the same (``None`` and ``"None"``) are refused."""
    codes: dict[tuple[type, Any], int] = {}
    names: list[str] = []
    out = np.empty(arr.size, dtype=np.int64)
    for i, x in enumerate(arr.tolist()):
        # str and bytes subclasses (numpy.str_) key as their base type: equal text is one id
        key = (str if isinstance(x, str) else bytes if isinstance(x, bytes) else type(x), x)
        try:
            code = codes.get(key)
        except TypeError:
            raise RolloutError(f"row {i}: a group id must be hashable (a string or a number), got "
                               f"{type(x).__name__}", field="index") from None
        if code is None:
            code = codes[key] = len(names)
            names.append(str(x))
        out[i] = code
    if len(set(names)) != len(names):
        seen: dict[str, tuple[type, Any]] = {}
        for (kind, value), code in codes.items():
            name = names[code]
            if name in seen:
                other = seen[name]
                raise RolloutError(f"the group ids {other[1]!r} ({other[0].__name__}) and {value!r} ({kind.__name__}) "
                                   "are different but print the same; give ids of one type", field="index")
            seen[name] = (kind, value)
    return torch.from_numpy(out), names


def _sorted_groups(arr: np.ndarray) -> tuple[Tensor, list[str]]:
    """Group ids by sorting (numbers, numpy strings); object arrays by value and type (``_object_groups``)."""
    if arr.dtype == object:
        return _object_groups(arr)
    uniq, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return torch.as_tensor(rank[inverse], dtype=torch.int64), [str(u) for u in uniq[order]]


def _string_codes(arr: np.ndarray) -> tuple[Tensor, pa.Array] | None:
    """Group ids and names of an index of Python strings (verl's uid object array) by hashing
    (Arrow's dictionary encoding numbers values in order of first appearance), or ``None`` where the
    other paths must decide: other element types (numbers, ``None``, bytes, str subclasses: keyed by
    value and type in ``_object_groups``), strings holding NUL (kept there, where Arrow's text path
    would be ambiguous) or that Arrow cannot encode (lone surrogates)."""
    if arr.size == 0 or arr.dtype.kind not in "OU":
        return None
    if arr.dtype == object and set(map(type, arr.tolist())) != {str}:
        return None
    try:
        strings = pa.array(arr, type=pa.large_string())
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        return None
    if strings.null_count or b"\x00" in _text_bytes(strings):
        return None
    encoded = strings.dictionary_encode()
    codes = torch.from_numpy(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))
    return codes, encoded.dictionary


def _text_bytes(strings: pa.LargeStringArray) -> bytes:
    """The UTF-8 bytes of all of a (fresh, unsliced) string array's values, back to back."""
    _, offsets, data = strings.buffers()
    if data is None or offsets is None:
        return b""
    end = int(np.frombuffer(offsets, dtype=np.int64, count=len(strings) + 1)[-1])
    text: bytes = data.slice(0, end).to_pybytes()
    return text


def pattern_starts(tokens: Tensor, pattern: Sequence[int]) -> Tensor:
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


class _Scan(NamedTuple):
    """What one pass over the trainer's ``(N, T)`` tensors finds: the boolean mask, each run of ones
    (row, start, exclusive end; row-major) and where each tool-call pattern starts on a mask token
    (row, column; row-major)."""

    mask: Tensor
    rows: Tensor
    starts: Tensor
    ends: Tensor
    hits: list[tuple[Tensor, Tensor]]


_CHUNK_BYTES = 1 << 22  # input bytes per block of rows: a block and its temporaries stay in the caches


def _scan(response_mask: Tensor, responses: Tensor | None, patterns: Sequence[Sequence[int]]) -> _Scan:
    """The mask, its runs and the pattern starts: blocks of rows through numpy on the CPU
    (``_scan_numpy``), else torch's whole-batch kernels (``_scan_torch``); both give the same."""
    n, t = response_mask.shape
    if response_mask.device.type == "cpu" and (responses is None or responses.device.type == "cpu") and n and t:
        source = segments.host_array(response_mask)
        tokens = None if responses is None else segments.host_array(responses)
        if source is not None and (responses is None or tokens is not None):
            # the patterns in the tokens' dtype, as the torch kernels compare them
            pats = [] if responses is None else [torch.tensor(list(p), dtype=responses.dtype).numpy() for p in patterns]
            return _scan_numpy(source, tokens, pats)
    return _scan_torch(response_mask, responses, patterns)


def _scan_torch(response_mask: Tensor, responses: Tensor | None, patterns: Sequence[Sequence[int]]) -> _Scan:
    mask = response_mask != 0
    edges = torch.diff(F.pad(mask.to(torch.int8), (1, 1)), dim=1)
    # row-major, so each row alternates run start (+1) and run end (−1)
    edge_rows, edge_cols = torch.nonzero(edges, as_tuple=True)
    hits = []
    for pattern in patterns:
        assert responses is not None
        found = torch.nonzero(pattern_starts(responses, pattern) & mask)
        hits.append((found[:, 0], found[:, 1]))
    return _Scan(mask, edge_rows[0::2], edge_cols[0::2], edge_cols[1::2], hits)


def _scan_numpy(source: np.ndarray, tokens: np.ndarray | None, patterns: list[np.ndarray]) -> _Scan:
    """Blocks of rows small enough for their temporaries to stay in cache. Per block: the mask (``!= 0``,
    written into the result), its edges (a neighbour compare into a row-padded scratch, so a run
    ending at ``T`` gets its edge at column ``T`` of its own row) and each pattern's starts on mask
    tokens. The set bytes are found word by word: per block its non-zero 8-byte words
    (``_set_words``), at the end the bytes set in them (``_set_bytes``)."""
    n, t = source.shape
    out = np.empty((n, t), np.bool_)  # every byte written below
    mask = torch.from_numpy(out)
    width = (t + 8) // 8 * 8  # > t and whole 8-byte words: a row's edge at t stays in the row
    row_bytes = t * max(source.itemsize, 1 if tokens is None else tokens.itemsize, 1)
    block = max(1, _CHUNK_BYTES // row_bytes)  # rows whose input (mask or token ids) fills the chunk
    lengths = sorted({len(p) for p in patterns if 0 < len(p) <= t})

    scratch = np.zeros((block, width), np.bool_)  # columns past t stay False
    hit_scratch = {length: np.zeros((block, width), np.bool_) for length in lengths}
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(1 + len(patterns))]
    for a in range(0, n, block):
        e = min(a + block, n)
        m, d = out[a:e], scratch[: e - a]
        np.not_equal(source[a:e], 0, out=m)
        d[:, 0] = m[:, 0]
        np.not_equal(m[:, 1:], m[:, :-1], out=d[:, 1:t])
        d[:, t] = m[:, t - 1]
        found[0].append(_set_words(d, a * width // 8))
        for k, pat in enumerate(patterns):
            length = len(pat)
            if length == 0 or length > t:
                continue
            assert tokens is not None
            span = t - length + 1
            h = hit_scratch[length][: e - a]  # its columns from span on stay False
            hit = h[:, :span]
            np.equal(tokens[a:e, :span], pat[0], out=hit)
            for j in range(1, length):
                hit &= tokens[a:e, j : j + span] == pat[j]
            found[1 + k].append(_set_words(h, a * width // 8))
    merged = [_set_bytes(*_concat_words(f)) for f in found]
    rows, cols = np.divmod(merged[0], width)
    hits = []
    flat_mask = out.reshape(-1)
    for pos in merged[1:]:
        hit_rows, hit_cols = np.divmod(pos, width)
        on = flat_mask[hit_rows * t + hit_cols]  # patterns count where they start on a mask token
        hits.append((torch.from_numpy(hit_rows[on]), torch.from_numpy(hit_cols[on])))
    # each row's edges alternate run start and run end
    starts, ends = torch.from_numpy(cols[0::2].copy()), torch.from_numpy(cols[1::2].copy())
    return _Scan(mask, torch.from_numpy(rows[0::2].copy()), starts, ends, hits)


def _set_words(d: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero 8-byte words of a C-contiguous bool array (size a multiple of 8) and their
    positions, counted from word ``first``."""
    words = d.reshape(-1).view(np.uint64)
    nz = np.flatnonzero(words != 0)  # a bool pass first: numpy's nonzero is fastest on bools
    return nz + first, words[nz]


def _concat_words(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _set_bytes(positions: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Flat byte positions (int64, increasing) of the set bytes of ``words`` at word ``positions``."""
    f = np.flatnonzero(words.view(bool))  # bytes 0 / 1: numpy's nonzero is fastest on bools
    found: np.ndarray = positions[f >> 3] * 8 + (f & 7)
    return found


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
    response_mask = _as_tensor(response_mask, "response_mask")
    outcome = None if outcome is None else _as_tensor(outcome, "outcome")
    if token_level_rewards is not None:
        token_level_rewards = _as_tensor(token_level_rewards, "token_level_rewards")
    responses = None if responses is None else _as_tensor(responses, "responses")
    step_rewards = None if step_rewards is None else _as_tensor(step_rewards, "step_rewards")
    if response_mask.dim() != 2:
        raise RolloutError(f"expected shape (N, T), got {tuple(response_mask.shape)}", field="response_mask")
    n = response_mask.shape[0]
    if (outcome is None) == (token_level_rewards is None):
        raise RolloutError("give exactly one of outcome and token_level_rewards", field="outcome")
    if token_level_rewards is not None and token_level_rewards.shape != response_mask.shape:
        raise RolloutError(
            f"expected shape {tuple(response_mask.shape)}, got {tuple(token_level_rewards.shape)}",
            field="token_level_rewards",
        )
    group, names = _dense_groups(index)
    if group.numel() != n:
        raise RolloutError(f"expected {n} group entries (one per row), got {group.numel()}", field="index")
    device = response_mask.device
    group = group.to(device)
    if (tool_call_start is None) != (tool_call_end is None):
        raise RolloutError("give both tool_call_start and tool_call_end patterns", field="tool_call_start")
    calls = tool_call_start is not None and tool_call_end is not None
    if calls and (responses is None or responses.shape != response_mask.shape):
        raise RolloutError("tool-call patterns need responses (N, T) token ids", field="responses")
    patterns = [tool_call_start, tool_call_end] if tool_call_start is not None and tool_call_end is not None else []
    scan = _scan(response_mask, responses if calls else None, patterns)
    if token_level_rewards is not None:  # after the scan: the mask read last is the likelier to be cached
        outcome = token_level_rewards.sum(-1)
    assert outcome is not None
    mask, rows, starts, ends = scan.mask, scan.rows, scan.starts, scan.ends
    s = rows.numel()
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    step_offsets = torch.cat([zero, torch.cumsum(torch.bincount(rows, minlength=n), 0)])
    call_offsets = torch.zeros(s + 1, dtype=torch.int64, device=device)
    call_start = call_end = None
    kind = torch.full((s,), int(StepKind.REASON), dtype=torch.int8, device=device)
    if tool_call_start is not None and tool_call_end is not None:
        call_step, call_start, call_end = _find_calls(
            scan.hits[0], scan.hits[1], response_mask.shape[1], rows, starts, ends, tool_call_start, tool_call_end,
            ids,
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
    # the step spans are the mask's runs, so they cover exactly its ones: no O(N·T) re-check
    return Rollouts.trusted(
        {"token_cover"},
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
    opens: tuple[Tensor, Tensor],
    closes: tuple[Tensor, Tensor],
    t: int,
    step_rows: Tensor,
    step_starts: Tensor,
    step_ends: Tensor,
    open_ids: Sequence[int],
    close_ids: Sequence[int],
    ids: Sequence[str] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pair each open pattern (``(rows, columns)`` where it starts on a mask token, row-major) with the
    first close pattern after it; ``(step of each call, call start, call end)``."""

    def who(row: int) -> str:
        return ids[row] if ids is not None else str(row)

    open_rows, open_cols = opens
    close_rows, close_cols = closes
    flat_open = open_rows * t + open_cols
    flat_close = close_rows * t + close_cols
    # each call closes at the first close pattern after its open pattern
    pos = torch.searchsorted(flat_close, flat_open + len(open_ids))
    missing = pos >= flat_close.numel()
    pos_c = pos.clamp_max(max(flat_close.numel() - 1, 0))
    if flat_close.numel():
        missing |= close_rows[pos_c] != open_rows
    if bool(missing.any()):
        i = int(torch.nonzero(missing)[0, 0])
        raise RolloutError(
            f"tool call opened at token {int(open_cols[i])} is never closed",
            trajectory=who(int(open_rows[i])),
            field="responses",
        )
    if pos.numel() != torch.unique(pos).numel() or pos.numel() != flat_close.numel():
        dup = torch.ones(flat_close.numel(), dtype=torch.int64, device=pos.device)
        dup.index_add_(0, pos, -torch.ones_like(pos))
        k = int(torch.nonzero(dup != 0)[0, 0])
        raise RolloutError(
            f"tool-call close pattern at token {int(close_cols[k])} does not close exactly one call "
            "(nested or unopened call)",
            trajectory=who(int(close_rows[k])),
            field="responses",
        )
    call_start = open_cols
    call_end = close_cols[pos] + len(close_ids)
    flat_step = step_rows * t + step_starts
    call_step = torch.searchsorted(flat_step, flat_open, right=True) - 1
    outside = call_end > step_ends[call_step]
    if bool(outside.any()):
        i = int(torch.nonzero(outside)[0, 0])
        raise RolloutError(
            f"tool call [{int(call_start[i])}, {int(call_end[i])}) runs past the end of its step "
            f"({int(step_ends[call_step[i]])}): calls must open and close inside one generated turn",
            trajectory=who(int(open_rows[i])),
            field="responses",
        )
    return call_step, call_start, call_end
