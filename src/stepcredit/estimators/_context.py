"""The context of a tool call: where its argument values last appeared in what the agent had read,
as hashed text features, and a logistic classifier over them (``call_evidence``'s ``context`` clue).

A correct call and a repeated mistake can look alike to every counting clue (both made by the same
failed runs, both grounded), and differ in *where* their values come from: ``mul(6, 14)`` where the
prompt reads ``(6 + 14)``; ``get_order`` of an id listed next to ``"status": "cancelled"``. The
features say, per call, its tool and for each argument value (by parameter): unseen, or the tokens
right before and after its last whole occurrence in the prompt, earlier tool results and observations
(and a bag of the tokens around it), plus the tokens between two argument values that appear close
together. They are hashed into ``dims`` buckets (CRC32, the same on every machine).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from typing import Any

import torch
from torch import Tensor

from stepcredit.rollouts import TOOL_ERROR, Rollouts
from stepcredit.rollouts._texts import argument_leaves, seen_before_steps

__all__ = ["context_features", "fit_logistic"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _last(value: Any, text: str) -> tuple[int, int] | None:
    """The span of the last occurrence of ``value`` in ``text`` (casefolded): strings as substrings,
    numbers as whole numbers (``6`` is not found in ``16`` or ``6.5``)."""
    if isinstance(value, str):
        needle = value.casefold()
        at = text.rfind(needle) if needle else -1
        return (at, at + len(needle)) if at >= 0 else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    pattern = r"(?<![\d.])" + re.escape(json.dumps(value)) + r"(?!\d|\.\d)"
    match = None
    for match in re.finditer(pattern, text):  # noqa: B007 — the last one
        pass
    return match.span() if match is not None else None


def _call_features(name: str, arguments: str, errored: bool, text: str, window: int) -> list[str]:
    """A call's feature strings (see the module docstring)."""
    out = [f"T|{name}"] + ([f"E|{name}"] if errored else [])
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return [*out, f"X|{name}"]
    spots: list[tuple[int, int]] = []
    for path, leaf in argument_leaves(parsed):
        if leaf is None or isinstance(leaf, bool) or leaf == "":
            continue
        readable = isinstance(leaf, str | int) or (isinstance(leaf, float) and math.isfinite(leaf))
        span = _last(leaf, text) if readable else None
        if span is None:
            out.append(f"U|{name}|{path}")
            continue
        spots.append(span)
        left = _TOKEN.findall(text[max(0, span[0] - window) : span[0]])
        right = _TOKEN.findall(text[span[1] : span[1] + window])
        if left:
            out.append(f"L|{name}|{path}|{left[-1]}")
        if right:
            out.append(f"R|{name}|{path}|{right[0]}")
        out.extend(f"B|{name}|{path}|{w}" for w in left + right)
    spots.sort()
    for (_, a_end), (b_start, _) in itertools.pairwise(spots):
        if 0 <= b_start - a_end <= window:
            out.extend(f"M|{name}|{w}" for w in _TOKEN.findall(text[a_end:b_start]))
    return out


def context_features(rollouts: Rollouts, *, window: int = 48, dims: int = 1 << 16) -> tuple[Tensor, Tensor]:
    """Every call's hashed context features as ``(flat [F], offsets [C])`` for ``fit_logistic`` (see
    the module docstring). Host-side text work, one pass over the calls."""
    r = rollouts
    assert r.texts is not None
    seen = seen_before_steps(r)
    names = r.texts.call_name.to_pylist()
    arguments = r.texts.call_arguments.to_pylist()
    errored = (r.call_ok == TOOL_ERROR).tolist()
    flat: list[int] = []
    offsets: list[int] = []
    for c, s in enumerate(r.call_step.tolist()):
        offsets.append(len(flat))
        feats = _call_features(names[c], arguments[c], errored[c], seen[s], window)
        flat.extend(zlib.crc32(f.encode()) % dims for f in feats)
    return (torch.tensor(flat, dtype=torch.int64, device=r.device),
            torch.tensor(offsets, dtype=torch.int64, device=r.device))


def fit_logistic(
    flat: Tensor,
    offsets: Tensor,
    train: Tensor,
    target: Tensor,
    *,
    l2: float = 1e-3,
    max_iter: int = 500,
) -> Tensor:
    """L2-regularised logistic regression over hashed features (``context_features``), fitted on the
    calls where ``train`` ([C] bool) holds to the soft targets ``target`` ([C], read where ``train``):

        minimise  mean_i BCE(σ(b + Σ_f w_f), y_i) + l2 · ‖w‖²

    (a sum over the call's feature buckets, a bucket counted as often as it occurs), strictly convex,
    solved by L-BFGS with a strong-Wolfe line search from zero to its optimum (or ``max_iter``
    evaluations) in float64, so the calls' order moves the result by rounding only; returns every call's
    logit. Deterministic: no random start, no sampling. Only the buckets that occur get a weight."""
    n = offsets.numel()
    device = flat.device
    lengths = torch.diff(offsets, append=torch.tensor([flat.numel()], device=device))
    owner = torch.repeat_interleave(torch.arange(n, device=device), lengths)
    buckets, feature = torch.unique(flat, return_inverse=True)
    keep = train[owner]
    rank = torch.cumsum(train.to(torch.int64), 0) - 1  # the training calls, renumbered in call order
    train_owner, train_feature = rank[owner[keep]], feature[keep]
    y = target[train].to(torch.float64)
    m = int(y.numel())
    params = torch.zeros(buckets.numel() + 1, dtype=torch.float64, device=device, requires_grad=True)

    def logits(owners: Tensor, features: Tensor, size: int, w: Tensor) -> Tensor:
        return torch.zeros(size, dtype=w.dtype, device=device).index_add(0, owners, w[:-1][features]) + w[-1]

    if m:
        opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                                history_size=10, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            z = logits(train_owner, train_feature, m, params)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + l2 * params[:-1].pow(2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return logits(owner, feature, n, params)
