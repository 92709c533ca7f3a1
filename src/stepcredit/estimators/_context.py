"""The context of a tool call: where its argument values last appeared in what the agent had read, as
hashed text features, and a logistic classifier over them (``call_evidence``'s ``context`` clue).

A correct call and a repeated mistake can look alike to every counting clue (both made by the same
failed runs, both grounded), and differ in *where* their values come from: ``mul(6, 14)`` where the
prompt reads ``(6 + 14)``; ``get_order`` of an id listed next to ``"status": "cancelled"``. The features
say, per call, its tool and for each argument value (by parameter): unseen, or the tokens right before
and after its last whole occurrence in the prompt, earlier tool results and observations (not a bag of
the tokens around it: on the design rollouts that bag added noise, each token counted as often as it
occurs), plus the tokens between two argument values whose last occurrences are close together, and
whether two values stand next to each other anywhere (any occurrences: the operator between them and
their order, or that no two do), and the same for the closest pair in the question alone, where a value
read from an earlier call's result stands for the part of the question that call's values came from
(``div(8, 2)`` on the 8 of ``sub(19, 11)`` where the question reads ``(19 - 11) / 2``: ``/`` stands
between them). A value read in a tool result that lists records (JSON objects) adds the fields of the
record it was picked from (for a string, the latest that holds it in a field named ``id`` or ``…_id``;
else the latest holding it in any field): each short text field's value and whether it is a word of the
question (``"status": "delivered"`` when the question asks for delivered orders), and for each number or
ISO date whether the record holds the list's maximum, minimum or neither, alone and with each word of
the question (the *most recent* order). Numbers are compared with the numbers of the question lines the
call is about (``_about_numbers``): each number argument (one bag more than the request asks for), and
each number field of the picked record, a mapping read at the key another argument names (the price of
the booked cabin above the request's budget). They are hashed into ``dims`` buckets (CRC32, the same on
every machine). ``call_sources`` gives the data flow between calls (which earlier result a value was
read from).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from stepcredit.core import TOOL_ERROR, Rollouts
from stepcredit.views import MAX_ARGUMENT_DEPTH, argument_leaves, seen_before_steps

__all__ = ["call_sources", "context_features", "feature_strings", "fit_logistic"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SHORT = 24  # the longest text field value taken as a category
_WORD = re.compile(r"[^\W\d_]{3,}")  # a word of the question: 3+ letters (``credit_card``: two words)


def _last(value: Any, text: str) -> tuple[int, int] | None:
    """The span of the last occurrence of ``value`` in ``text`` (casefolded): strings as substrings,
    numbers as whole numbers (``6`` is not found in ``16`` or ``6.5``)."""
    if isinstance(value, str):
        needle = value.casefold()
        at = text.rfind(needle) if needle else -1
        return (at, at + len(needle)) if at >= 0 else None
    spans = _occurrences(value, text)
    return spans[-1] if spans else None


def _occurrences(value: Any, text: str) -> list[tuple[int, int]]:
    """Every span where ``value`` occurs in ``text`` (casefolded), matched as in ``_last``; strings
    without overlaps."""
    if isinstance(value, str):
        needle = value.casefold()
        return [m.span() for m in re.finditer(re.escape(needle), text)] if needle else []
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return [m.span() for m in re.finditer(r"(?<![\d.])" + re.escape(json.dumps(value)) + r"(?!\d|\.\d)", text)]


def _call_features(
    name: str,
    arguments: str,
    errored: bool,
    text: str,
    window: int,
    question: _Question | None = None,
    pick: Pick | None = None,
) -> list[str]:
    """A call's feature strings (see the module docstring). ``question``: the prompt's words and length,
    and ``pick``: the record a value was picked from in the tool results read before the call
    (``_picker``; both for the record features of values read in a tool result)."""
    out = [f"T|{name}"] + ([f"E|{name}"] if errored else [])
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return [*out, f"X|{name}"]
    leaves = [(path, leaf) for path, leaf in argument_leaves(parsed) if not _blank(leaf)]
    spots: list[tuple[int, int]] = []
    for path, leaf in leaves:
        span = _last(leaf, text) if _searchable(leaf) else None
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
        if question is not None and pick is not None and span[0] >= question.length:  # read in a result
            out.extend(_record_features(name, path, pick(leaf), question.words))
    spots.sort()
    for (_, a_end), (b_start, _) in itertools.pairwise(spots):
        if 0 <= b_start - a_end <= window:
            out.extend(f"M|{name}|{w}" for w in _TOKEN.findall(text[a_end:b_start]))
    out.extend(_pair_features(name, [(path, leaf) for path, leaf in leaves if _searchable(leaf)], text))
    return out


_NEXT_TO = 8  # at most this many characters between two values that stand next to each other


def _pair_features(name: str, leaves: list[tuple[str, Any]], text: str) -> list[str]:
    """Whether two argument values stand next to each other anywhere in ``text`` (any occurrences, at
    most ``_NEXT_TO`` characters apart): for the closest such pair, the tokens between them and whether
    the values come in the order of their parameters (``NO|…|ab``) or reversed (``ba``); ``N0`` where no
    two do (an operand off by one: ``add(7, 14)`` where the question reads ``6 + 14``)."""
    if len(leaves) < 2:
        return []
    pair = _closest_pair([_occurrences(leaf, text) for _, leaf in leaves])
    if pair is None:
        return [f"N0|{name}"]
    first, second, order = pair
    return [f"NO|{name}|{order}"] + [f"N|{name}|{w}" for w in _TOKEN.findall(text[first[1] : second[0]])]


Span = tuple[int, int]
Picked = tuple[list[dict[str, Any]], dict[str, Any], str]  # a record's list, the record, the value's field
Pick = Callable[[Any], "Picked | None"]


def _closest_pair(spans: Sequence[Sequence[Span]]) -> tuple[Span, Span, str] | None:
    """Of two different values' spans (each value's sorted by start), the closest two at most
    ``_NEXT_TO`` characters apart, the first ending before the second starts: ``(first, second,
    order)``, order ``ab`` where the first belongs to the earlier value, else ``ba``; ``None`` if none."""
    starts = [[b for b, _ in s] for s in spans]
    best: tuple[int, Span, Span, str] | None = None
    for i, j in itertools.combinations(range(len(spans)), 2):
        for a, b, order in ((i, j, "ab"), (j, i, "ba")):
            for a_span in spans[a]:
                k = bisect.bisect_left(starts[b], a_span[1])  # the first span of b from a's end on
                if k < len(starts[b]):
                    gap = starts[b][k] - a_span[1]
                    if gap <= _NEXT_TO and (best is None or gap < best[0]):
                        best = (gap, a_span, spans[b][k], order)
    return None if best is None else best[1:]


def _question_features(name: str, spans: Sequence[Sequence[Span]], question: str) -> tuple[list[str], Span | None]:
    """The operator the question puts between a call's values, where a value read from an earlier
    call's result stands for the part of the question that call's values came from: ``mul(8, 2)``
    on the result 8 of ``sub(19, 11)`` where the question reads ``(19 - 11) / 2`` gets ``/`` (``Q|…``,
    and the order ``QO|…``; ``Q0`` where no two values stand next to each other). ``spans``: per
    searchable argument value, its spans in the question (see ``_question_spans``). Returns the
    features and the span of the question the call stands for: its two closest values' (from the
    first's start to the second's end), or a lone value's last span."""
    if len(spans) == 1:
        return [], (spans[0][-1] if spans[0] else None)
    pair = _closest_pair(spans)
    if pair is None:
        return [f"Q0|{name}"], None
    first, second, order = pair
    return [f"QO|{name}|{order}"] + [f"Q|{name}|{w}" for w in _TOKEN.findall(question[first[1] : second[0]])], (
        first[0], second[1])


def _question_spans(leaf: Any, question: str, result_texts: Sequence[str], lo: int, hi: int,
                    stands_for: dict[int, Span]) -> list[Span]:
    """A value's spans in the (casefolded) question: where the question gives it, else the span the
    call it was read from stands for (``_read_from``), else none."""
    spans = _occurrences(leaf, question)
    if spans:
        return spans
    source = _read_from(leaf, result_texts, lo, hi)
    return [stands_for[source]] if source is not None and source in stands_for else []


def _read_from(leaf: Any, result_texts: Sequence[str], lo: int, hi: int) -> int | None:
    """The call a value was read from: the latest of the calls ``[lo, hi)`` whose (casefolded) result
    text holds it, or ``None``."""
    return next((k for k in range(hi - 1, lo - 1, -1) if _last(leaf, result_texts[k]) is not None), None)


def _blank(leaf: Any) -> bool:
    """An argument leaf that says nothing about where it came from: ``None``, a boolean, ``""``."""
    return leaf is None or isinstance(leaf, bool) or leaf == ""


def _searchable(leaf: Any) -> bool:
    """An argument leaf the text can be searched for: a string, an integer, a finite float."""
    return isinstance(leaf, str | int) or (isinstance(leaf, float) and math.isfinite(leaf))


def _earlier_calls(r: Rollouts) -> list[tuple[int, int]]:
    """Per call, the range ``[lo, hi)`` of the calls of its trajectory made before its step."""
    first_call = r.call_offsets[r.step_offsets[:-1]].tolist()  # each trajectory's first call
    traj_of_step = r.step_traj.tolist()
    first_of_step = r.call_offsets[:-1].tolist()
    return [(first_call[traj_of_step[s]], first_of_step[s]) for s in r.call_step.tolist()]


class _Question(NamedTuple):
    words: frozenset[str]  # the prompt's words (casefolded, ``_WORD``)
    length: int  # the casefolded prompt's length: where the tool results start in the seen text


def _records(value: Any, depth: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Every record (JSON object) of a parsed tool result, alone, and every list of two or more
    records, a list before the records in it."""
    if depth > MAX_ARGUMENT_DEPTH:
        return
    if isinstance(value, dict):
        yield [value]
        for v in value.values():
            yield from _records(v, depth + 1)
    elif isinstance(value, list):
        rows = [v for v in value if isinstance(v, dict)]
        if len(rows) >= 2:
            yield rows
        for v in value:
            yield from _records(v, depth + 1)


def _sortable(value: Any) -> tuple[int, Any] | None:
    """A record field that can be ranked: a finite number, or an ISO date (time) as text."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = _number(value)
        return None if number is None else (0, number)
    if isinstance(value, str) and _DATE.match(value):
        return (1, value)
    return None


def _same_value(leaf: Any, value: Any) -> bool:
    if isinstance(leaf, str):
        return isinstance(value, str) and value == leaf.casefold()
    return not isinstance(value, bool) and isinstance(value, int | float) and value == leaf


def _record_features(name: str, path: str, picked: Picked | None, words: frozenset[str]) -> list[str]:
    """Where the value was picked from a record (``_picked``: alone or in a list of records), per other
    field of the picked record: a rankable field (number, ISO date) says whether the record holds the
    list's maximum, minimum or neither — alone and with each word of the question (the most *recent*
    order, the *cheapest* flight); a short text field says its value, and whether that value is a word
    of the question (the order listed as *delivered* when the question asks for delivered orders)."""
    if picked is None:
        return []
    rows, row, own = picked
    out: list[str] = []
    for field, value in row.items():
        if field == own:
            continue
        key = _sortable(value)
        if isinstance(value, bool):
            value = json.dumps(value)
        if key is None:
            if isinstance(value, str) and 0 < len(value) <= _SHORT:
                out.append(f"S|{name}|{path}|{field}|{value}")
                said = _WORD.findall(value)
                if said and all(w in words for w in said):  # ("11:00" has no word to use)
                    out.append(f"SQ|{name}|{path}|{field}")
            continue
        column = [_sortable(other.get(field)) for other in rows]
        if any(c is None or c[0] != key[0] for c in column):
            continue
        keys = [c for c in column if c is not None]
        high, low = max(keys), min(keys)
        if high == low:
            continue
        rank = "max" if key == high else "min" if key == low else "mid"
        out.append(f"K|{name}|{path}|{field}|{rank}")
        out.extend(f"KQ|{name}|{path}|{field}|{rank}|{w}" for w in sorted(words))
    return out


def _picker(results: Sequence[Any]) -> Pick:
    """``_picked`` over ``results`` (the parsed tool results read before a call, latest first), each
    value looked up once: the record and the number features of a call share it."""
    memo: dict[tuple[type, Any], Picked | None] = {}

    def pick(leaf: Any) -> Picked | None:
        key = (type(leaf), leaf)
        if key not in memo:
            memo[key] = _picked(leaf, results)
        return memo[key]

    return pick


def _picked(leaf: Any, results: Sequence[Any]) -> Picked | None:
    """The record a value was picked from, ``(its list, the record, the field equal to the value)``: for
    a string, the latest tool result's record that holds it in an identifier field (named ``id`` or
    ``…_id``: a payment id is the user's payment method ``{"id": "cert_1", "kind": "certificate"}``, not
    a later reservation that names it as ``paid``), else — and for a number — the latest record holding
    it in any field (the first such field of the record)."""
    if isinstance(leaf, bool) or not isinstance(leaf, str | int | float):
        return None
    fallback: Picked | None = None
    for parsed in results:
        for rows in _records(parsed):
            for row in rows:
                equal = [k for k, v in row.items() if _same_value(leaf, v)]
                if not equal:
                    continue
                if not isinstance(leaf, str):
                    return rows, row, equal[0]
                own = next((k for k in equal if k.casefold() == "id" or k.casefold().endswith("_id")), None)
                if own is not None:
                    return rows, row, own
                if fallback is None:
                    fallback = (rows, row, equal[0])
    return fallback


_QNUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")


def _line_numbers(line: str) -> list[tuple[float, str]]:
    """The numbers of a question line, each with the token right before it (``^`` at the start), but
    not the line's list marker (``2.`` of ``2. Add 2 checked bags``)."""
    out = []
    for m in _QNUMBER.finditer(line):
        if not line[: m.start()].strip() and line[m.end() : m.end() + 1] == ".":
            continue
        before = _TOKEN.findall(line[max(0, m.start() - 24) : m.start()])
        number = float(m.group())  # digits: a float, at worst inf
        if math.isfinite(number):
            out.append((number, before[-1] if before else "^"))
    return out


def _number(value: Any) -> float | None:
    """A JSON number as a finite float; ``None`` for anything else (booleans, strings, an integer too
    large for a float, non-finite floats)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _compare(value: float, numbers: list[tuple[float, str]]) -> list[str]:
    return [f"{'lt' if value < x else 'eq' if value == x else 'gt'}|{tok}" for x, tok in numbers]


def _number_features(name: str, leaves: list[tuple[str, Any]], numbers: list[tuple[float, str]],
                     pick: Pick) -> list[str]:
    """Comparisons with the numbers of the question lines the call is about: each number argument
    (``AQ``), and each number field of the record a value was picked from (``RQ``) — a field holding
    a mapping is read at the key another argument names (``price.@``: the price of the cabin the call
    books)."""
    out: list[str] = []
    said = {leaf.casefold() for _, leaf in leaves if isinstance(leaf, str)}  # keys another argument names
    for path, leaf in leaves:
        number = _number(leaf)
        if number is not None:
            out.extend(f"AQ|{name}|{path}|{c}" for c in _compare(number, numbers))
        picked = pick(leaf)
        if picked is None:
            continue
        _, row, own = picked
        for field, value in row.items():
            if field == own:
                continue
            if isinstance(value, dict):
                key = next((k for k in value if k in said), None)
                value, field = (value[key], f"{field}.@") if key is not None else (None, field)
            number = _number(value)
            if number is not None:
                out.extend(f"RQ|{name}|{path}|{field}|{c}" for c in _compare(number, numbers))
    return out


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def context_features(rollouts: Rollouts, *, window: int = 48, dims: int = 1 << 16) -> tuple[Tensor, Tensor]:
    """Every call's hashed context features as ``(flat [F], offsets [C])`` for ``fit_logistic`` (see
    the module docstring). Host-side text work, one pass over the calls."""
    flat: list[int] = []
    offsets: list[int] = []
    for feats in feature_strings(rollouts, window=window):
        offsets.append(len(flat))
        flat.extend(zlib.crc32(f.encode()) % dims for f in feats)
    device = rollouts.device
    return (torch.tensor(flat, dtype=torch.int64, device=device),
            torch.tensor(offsets, dtype=torch.int64, device=device))


def feature_strings(rollouts: Rollouts, *, window: int = 48) -> Iterator[list[str]]:
    """Every call's context features before hashing, in call order (see the module docstring)."""
    r = rollouts
    assert r.texts is not None
    seen = seen_before_steps(r)
    names = r.texts.call_name.to_pylist()
    arguments = r.texts.call_arguments.to_pylist()
    errored = (r.call_ok == TOOL_ERROR).tolist()
    prompts = [p.casefold() for p in r.texts.prompt.to_pylist()]
    questions = [_Question(frozenset(_WORD.findall(p)), len(p)) for p in prompts]
    texts = [x.casefold() for x in r.texts.call_result.to_pylist()]
    parsed = [_parsed(x) for x in texts]
    earlier = _earlier_calls(r)
    stands_for: dict[int, Span] = {}  # the span of its question each call's values came from
    for c, (s, i) in enumerate(zip(r.call_step.tolist(), r.call_traj.tolist(), strict=True)):
        lo, hi = earlier[c]
        pick = _picker([x for x in reversed(parsed[lo:hi]) if x is not None])
        feats = _call_features(names[c], arguments[c], errored[c], seen[s], window, questions[i], pick)
        leaves = _searchable_leaves(arguments[c])
        if leaves:
            spans = [_question_spans(leaf, prompts[i], texts, lo, hi, stands_for) for _, leaf in leaves]
            extra, span = _question_features(names[c], spans, prompts[i])
            feats.extend(extra)
            if span is not None:
                stands_for[c] = span
            numbers = _about_numbers(prompts[i], [leaf for _, leaf in leaves], spans)
            feats.extend(_number_features(names[c], leaves, numbers, pick))
        yield feats


def _searchable_leaves(arguments: str) -> list[tuple[str, Any]]:
    """The ``(path, value)`` leaves of a call's arguments that the text can be searched for
    (``_searchable``, not ``_blank``), in parameter order; none where the arguments are not JSON."""
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        return []
    return [(path, leaf) for path, leaf in argument_leaves(parsed) if not _blank(leaf) and _searchable(leaf)]


def _about_numbers(question: str, leaves: Sequence[Any], spans: Sequence[Sequence[Span]]) -> list[tuple[float, str]]:
    """The numbers of the question lines a call is about: the lines where one of its non-number values
    stands (``_question_spans``: the question gives it, or it was read from a call that stands for a
    part of the question), where that value stands on one line only (the reservation an ``add_bags``
    names; the search a booked flight was picked from, not the cabin every request repeats)."""
    lines: set[int] = set()
    for leaf, at in zip(leaves, spans, strict=True):
        if isinstance(leaf, str):
            found = {question.count("\n", 0, start) for start, _ in at}
            if len(found) == 1:
                lines |= found
    rows = question.split("\n")
    return [number for k in sorted(lines) for number in _line_numbers(rows[k])]


def call_sources(rollouts: Rollouts) -> tuple[Tensor, Tensor]:
    """The data flow between calls: ``(call, source)`` pairs (int64 ``[P]`` each) where an argument
    value of ``call`` appears in the result of an earlier ``source`` call of the same trajectory — for
    each value the latest such call (the value was read there) — and not in the prompt (a value the
    question gives was read there, whatever result repeats it). Values matched as in the context
    features: strings as case-insensitive substrings, numbers as whole numbers."""
    r = rollouts
    assert r.texts is not None
    arguments = r.texts.call_arguments.to_pylist()
    results = [x.casefold() for x in r.texts.call_result.to_pylist()]
    prompts = [p.casefold() for p in r.texts.prompt.to_pylist()]
    calls: list[int] = []
    sources: list[int] = []
    for c, ((lo, hi), i) in enumerate(zip(_earlier_calls(r), r.call_traj.tolist(), strict=True)):
        if lo == hi:
            continue
        found: set[int] = set()
        for _, leaf in _searchable_leaves(arguments[c]):
            if _last(leaf, prompts[i]) is not None:
                continue  # the question gave it
            source = _read_from(leaf, results, lo, hi)
            if source is not None:
                found.add(source)
        for source in sorted(found):
            calls.append(c)
            sources.append(source)
    return (torch.tensor(calls, dtype=torch.int64, device=r.device),
            torch.tensor(sources, dtype=torch.int64, device=r.device))


def fit_logistic(
    flat: Tensor,
    offsets: Tensor,
    train: Tensor,
    target: Tensor,
    *,
    l2: float = 3e-4,
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
