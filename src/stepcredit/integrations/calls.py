"""Who made which tool call, from token spans alone.

Recipes that compare calls across the trajectories of a task (``call_consensus``, ``action_anchor``)
key a call by ``(tool name, canonical arguments)``. Inside a trainer there are only token ids and the
call spans found by their open / close patterns, so the key comes from the tokens:

* ``"tokens"``: two calls are the same call when their token ids are identical (exact, vectorized, no
  tokenizer needed; a call written with other white space or argument order is another call);
* ``"text"``: the span is decoded (``decode``, e.g. ``tokenizer.batch_decode``), the open / close
  markers stripped, and a JSON body ``{"name": ..., "arguments": {...}}`` (Hermes / Qwen / Llama 3
  tool calls) read into name + canonical JSON arguments, so argument order and spacing do not matter;
  a body that is not such JSON keeps its stripped text as the arguments (and an empty name).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

from stepcredit.core import Rollouts, canonical_json
from stepcredit.io.tensors import pattern_starts

__all__ = ["CallIdentity", "Decode", "name_calls", "parse_call_text", "well_formed_calls"]

CallIdentity = Literal["tokens", "text"]
Decode = Callable[[list[list[int]]], list[str]]


def _span_tokens(responses: Tensor, rows: Tensor, starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """``(C, L)`` token ids of each span, right-padded with −1, and the spans' lengths."""
    lengths = ends - starts
    width = int(lengths.max()) if lengths.numel() else 0
    pos = starts[:, None] + torch.arange(width, device=responses.device)[None, :]
    inside = pos < ends[:, None]
    ids = responses[rows[:, None], pos.clamp_max(responses.shape[1] - 1)].long()
    return torch.where(inside, ids, torch.full_like(ids, -1)), lengths


def parse_call_text(text: str, markers: Sequence[str] = ()) -> tuple[str, str]:
    """``(name, canonical arguments)`` of one decoded call: ``markers`` stripped, then a JSON object
    with ``name`` and ``arguments`` (an object, or a string holding one); otherwise ``("", text)``."""
    body = text
    for marker in markers:
        body = body.replace(marker, "")
    body = body.strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return "", body
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return "", body
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return value["name"], args
    try:
        return value["name"], canonical_json(args)
    except (TypeError, ValueError, RecursionError):
        return value["name"], body


def name_calls(
    rollouts: Rollouts,
    responses: Tensor,
    identity: CallIdentity = "tokens",
    *,
    decode: Decode | None = None,
    markers: Sequence[str] = (),
) -> Rollouts:
    """``rollouts`` (with call token spans, e.g. from ``from_trainer_tensors``) with every call's
    ``name`` / ``arguments`` texts filled from its tokens in ``responses (N, T)``; see the module doc
    for the two identities. ``markers``: the open / close strings to strip before reading the JSON."""
    r = rollouts
    if r.num_calls == 0:
        return r
    if r.call_token_start is None or r.call_token_end is None:
        raise ValueError("naming calls needs their token spans (call_token_start/end)")
    ids, lengths = _span_tokens(responses, r.call_traj, r.call_token_start, r.call_token_end)
    if identity == "tokens":
        _, inverse = torch.unique(ids, dim=0, return_inverse=True)
        names = pa.array([""] * r.num_calls, type=pa.large_string())
        args = pa.array(inverse.cpu().numpy()).cast(pa.large_string())
    elif identity == "text":
        if decode is None:
            raise ValueError('call identity "text" needs a decode function (e.g. tokenizer.batch_decode)')
        spans = [row[:n] for row, n in zip(ids.tolist(), lengths.tolist(), strict=True)]
        parsed = [parse_call_text(t, markers) for t in decode(spans)]
        names = pa.array([p[0] for p in parsed], type=pa.large_string())
        args = pa.array([p[1] for p in parsed], type=pa.large_string())
    else:
        raise ValueError(f'call identity must be "tokens" or "text", got {identity!r}')
    assert r.texts is not None
    return replace(r, texts=replace(r.texts, call_name=names, call_arguments=args))


def well_formed_calls(ids: Tensor, mask: Tensor, open_ids: Sequence[int], close_ids: Sequence[int]) -> Tensor:
    """``ids (N, T)`` with every tool-call marker that does not belong to a well-formed call disabled
    (its first token set to −1), so that ``from_trainer_tensors`` finds only whole calls.

    A well-formed call is an open marker followed, as the next marker of either kind, by a close marker
    in the same model turn (run of ``mask``). Everything else — a call cut off by the token budget, a
    stray close, the outer open of a nested call, a marker in a tool result — is a sampled completion's
    noise, not an error worth stopping training for."""
    n, t = ids.shape
    mask = mask.bool()
    starts = mask & ~F.pad(mask, (1, 0))[:, :t]
    run = torch.cumsum(starts.flatten().long(), 0).view(n, t)  # turn number, valid where mask
    cols = torch.arange(t, device=ids.device)

    def occurrences(pattern: Sequence[int]) -> Tensor:
        last = (cols + len(pattern) - 1).clamp_max(t - 1)
        hit = pattern_starts(ids, pattern) & mask & mask[:, last] & (run[:, last] == run)
        return torch.nonzero(hit.flatten()).flatten()

    opens, closes = occurrences(open_ids), occurrences(close_ids)
    pos = torch.cat([opens, closes])
    is_close = torch.cat([torch.zeros_like(opens, dtype=torch.bool), torch.ones_like(closes, dtype=torch.bool)])
    order = torch.argsort(pos, stable=True)
    pos, is_close = pos[order], is_close[order]
    turn = run.flatten()[pos]
    pair = ~is_close[:-1] & is_close[1:] & (turn[:-1] == turn[1:]) & (pos[1:] >= pos[:-1] + len(open_ids))
    good = torch.zeros_like(is_close)
    good[:-1] |= pair
    good[1:] |= pair
    out = ids.clone()
    out.view(-1)[pos[~good]] = -1
    return out
