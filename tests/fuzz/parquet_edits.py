"""Applying a ``ParquetCase``: base tables written by stepcredit, edited column by column (at the
trajectory, step or call level), written to Parquet bytes, then damaged as bytes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stepcredit import from_trainer_tensors
from stepcredit.envs import make_rollouts
from stepcredit.io import to_arrow

Pairs = list[tuple[str, pa.Array]]


def base_tables() -> dict[str, pa.Table]:
    """``plain``: make_rollouts(3, 2); ``rich``: with every optional annotation column (a NaN
    confidence among them); ``tokens``: trainer tensors with token spans and a response length."""
    r = make_rollouts(3, 2, seed=0)
    s, n = r.num_steps, r.num_trajectories
    rich = dataclasses.replace(
        r,
        confidence=torch.tensor([0.5, math.nan, 1.0, 0.0, math.nan, 0.25])[:n],
        prm=torch.linspace(0, 1, s),
        abandoned=torch.arange(s) % 3 == 0,
        tree=torch.arange(n) // 2,
        rubric=torch.ones(n, 2, dtype=torch.bool),
    )
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    tokens = from_trainer_tensors(mask, ["a", "a", "b"], outcome=torch.tensor([1.0, 0.0, 0.5]))
    return {"plain": to_arrow(r), "rich": to_arrow(rich), "tokens": to_arrow(tokens)}


def _bad_text(n: int, unit: bytes) -> pa.Array:
    """A large_string array whose bytes are not UTF-8 (Arrow does not check on construction)."""
    offsets = np.arange(n + 1, dtype=np.int64) * len(unit)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(unit * n)])


def values(kind: str, n: int, orig: pa.Array | None) -> pa.Array:
    """A replacement column of ``n`` values of the given kind (``orig``: the column it replaces)."""
    make: dict[str, Callable[[], pa.Array]] = {
        "str_numbers": lambda: pa.array([f"{i}.5" for i in range(n)], pa.large_string()),
        "float_frac": lambda: pa.array([i + 0.5 for i in range(n)], pa.float64()),
        "float_int": lambda: pa.array([float(i % 3) for i in range(n)], pa.float64()),
        "float_nan": lambda: pa.array([math.nan] * n, pa.float32()),
        "float_inf": lambda: pa.array([math.inf if i % 2 else -math.inf for i in range(n)], pa.float32()),
        "float64_big": lambda: pa.array([1e39] * n, pa.float64()),
        "float64_1e19": lambda: pa.array([1e19] * n, pa.float64()),
        "nulls_some": lambda: (
            pa.array([None, *orig.to_pylist()[1:]], orig.type) if orig is not None else pa.nulls(n, pa.int64())
        ),
        "nulls_all": lambda: pa.nulls(n, orig.type if orig is not None else pa.float32()),
        "null_type": lambda: pa.nulls(n),
        "bool": lambda: pa.array([i % 2 == 0 for i in range(n)]),
        "int16_300": lambda: pa.array([300] * n, pa.int16()),
        "int64_neg": lambda: pa.array([-5] * n, pa.int64()),
        "uint64_max": lambda: pa.array([2**64 - 1] * n, pa.uint64()),
        "int64_min": lambda: pa.array([-(2**63)] * n, pa.int64()),
        "int64_max": lambda: pa.array([2**63 - 1] * n, pa.int64()),
        "list_int": lambda: pa.array([[1, 2]] * n),
        "list_null": lambda: pa.array([[None]] * n, pa.list_(pa.bool_())),
        "struct": lambda: pa.array([{"a": 1}] * n),
        "dictionary": lambda: (orig if orig is not None else pa.array(["x"] * n)).dictionary_encode(),
        "binary": lambda: pa.array([b"\xff"] * n, pa.binary()),
        "string": lambda: pa.array(["x"] * n, pa.string()),
        "large_string_of": lambda: (orig if orig is not None else pa.array([1] * n)).cast(pa.large_string()),
        "empty_string": lambda: pa.array([""] * n, pa.large_string()),
        "invalid_utf8": lambda: _bad_text(n, b"\xff\xfe"),
        "surrogate_text": lambda: _bad_text(n, b"\xed\xa0\x80"),
        "timestamp": lambda: pa.array([0] * n, pa.timestamp("s")),
        "decimal": lambda: pa.array([Decimal("1.50")] * n, pa.decimal128(5, 2)),
        "float16": lambda: pa.array(np.ones(n, np.float16), pa.float16()),
        "long_string": lambda: pa.array(["x" * 5000] * n, pa.large_string()),
    }
    return make[kind]()


def _list_parts(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, pa.DataType]:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TypeError(f"not a list column: {arr.type}")
    offsets = np.asarray(arr.offsets)
    return offsets - offsets[0], arr.flatten(), arr.type


def _make_list(offsets: np.ndarray, items: pa.Array, like: pa.DataType, mask: pa.Array | None = None) -> pa.Array:
    if pa.types.is_large_list(like):
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), items, mask=mask)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items, mask=mask)


def _pairs(struct: pa.StructArray) -> Pairs:
    return [(f.name, struct.field(i)) for i, f in enumerate(struct.type)]


def _struct(pairs: Pairs) -> pa.StructArray:
    return pa.StructArray.from_arrays([a for _, a in pairs], names=[n for n, _ in pairs])


def edit_level(table: pa.Table, level: str, fn: Callable[[Pairs, int], Pairs]) -> pa.Table:
    """``table`` with the fields of one level (top columns, step struct, call struct) edited by ``fn``."""
    if level == "top":
        pairs = fn([(n, table.column(i).combine_chunks()) for i, n in enumerate(table.column_names)], table.num_rows)
        return pa.Table.from_arrays([a for _, a in pairs], names=[n for n, _ in pairs], metadata=table.schema.metadata)
    step_off, steps, step_type = _list_parts(table.column("steps"))
    if level == "step":
        new_steps = _struct(fn(_pairs(steps), len(steps)))
    else:
        call_off, calls, call_type = _list_parts(steps.field("calls"))
        new_calls = _make_list(call_off, _struct(fn(_pairs(calls), len(calls))), call_type)
        new_steps = _struct([(n, new_calls if n == "calls" else a) for n, a in _pairs(steps)])
    i = table.column_names.index("steps")
    return table.set_column(i, "steps", _make_list(step_off, new_steps, step_type))


def _reshape(arr: pa.Array | pa.ChunkedArray, how: str) -> pa.Array:
    offsets, items, kind = _list_parts(arr)
    n = len(offsets) - 1
    if how == "empty":
        return _make_list(np.zeros(n + 1, np.int64), items.slice(0, 0), kind)
    if how == "all_first":
        return _make_list(np.array([0] + [len(items)] * n, np.int64), items, kind)
    if how == "list32":
        return _make_list(offsets, items, pa.list_(items.type))
    if how == "fixed":
        widths = set(np.diff(offsets).tolist())
        if len(widths) != 1:
            raise ValueError("uneven lists")
        return pa.FixedSizeListArray.from_arrays(items, widths.pop())
    if how == "sliced":  # the values start one element in: offsets that do not start at 0
        extra = pa.concat_arrays([items.slice(0, 1), items]) if len(items) else items
        return _make_list(offsets + (1 if len(items) else 0), extra, kind)
    mask = pa.array([i == 0 for i in range(n)])  # "nulls": the first list is null
    return _make_list(offsets, items, kind, mask=mask)


def apply_edit(table: pa.Table, edit: tuple[Any, ...]) -> pa.Table:
    op = edit[0]
    if op == "set":
        _, level, name, kind = edit

        def put(pairs: Pairs, n: int) -> Pairs:
            orig = next((a for k, a in pairs if k == name), None)
            new = values(kind, n, orig)
            if orig is None:
                return [*pairs, (name, new)]
            return [(k, new if k == name else a) for k, a in pairs]

        return edit_level(table, level, put)
    if op == "drop":
        _, level, name = edit
        return edit_level(table, level, lambda pairs, n: [(k, a) for k, a in pairs if k != name])
    if op == "rename":
        _, level, name, new_name = edit
        return edit_level(table, level, lambda pairs, n: [(new_name if k == name else k, a) for k, a in pairs])
    if op == "lists":
        _, what, how = edit
        if what in ("steps", "rubric"):
            i = table.column_names.index(what)
            return table.set_column(i, what, _reshape(table.column(what), how))
        return edit_level(
            table, "step", lambda pairs, n: [(k, _reshape(a, how) if k == "calls" else a) for k, a in pairs]
        )
    if op == "meta":
        _, key, value = edit
        meta = dict(table.schema.metadata or {})
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
        return table.replace_schema_metadata(meta)
    if op == "rows":
        how = edit[1]
        if how == "empty":
            return table.slice(0, 0)
        if how == "first":
            return table.slice(0, 1)
        if how == "double":
            return pa.concat_tables([table, table])
        return table.take(pa.array(list(range(table.num_rows))[::-1], pa.int64()))
    if op == "chunks":
        k = edit[1]
        size = max(1, -(-table.num_rows // k))
        parts = [table.slice(i, size) for i in range(0, table.num_rows, size)] or [table]
        return pa.concat_tables(parts)
    raise ValueError(f"unknown edit {edit!r}")


def to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def damage(data: bytes, edit: tuple[Any, ...]) -> bytes:
    op = edit[0]
    if op == "truncate":
        return data[: len(data) * edit[1] // 1000]
    if op == "random":
        return bytes(edit[1])
    at = len(data) * edit[1] // 1000 if op == "byte" else len(data) - edit[1]
    if not 0 <= at < len(data):
        return data
    return data[:at] + bytes([edit[2]]) + data[at + 1 :]
