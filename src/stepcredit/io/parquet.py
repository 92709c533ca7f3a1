"""Parquet: one row per trajectory with nested ``steps: list<struct<..., calls: list<struct>>>``.

The layout follows the column schema: trajectory columns at the top level, step columns as fields
of the ``steps`` struct, call columns as fields of its ``calls`` struct, each under its declared
name (``Column.key``); the group is stored by name. Both directions map the CSR offsets of
``Rollouts`` straight onto Arrow list offsets, with no Python loop over rows, so large logs move at
columnar speed.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stepcredit.core import TEXT_COLUMNS, Column, Rollouts, Texts, segments
from stepcredit.core.errors import RolloutError, show
from stepcredit.io.atomic import atomic_write

__all__ = ["RolloutsWriter", "from_arrow", "read_parquet", "to_arrow", "write_parquet"]

FORMAT_VERSION = "1"
RESPONSE_LENGTH = b"stepcredit.response_length"
_STRUCTURE = ("group", "step_offsets", "call_offsets", "response_mask")  # stored as names, offsets, metadata


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _list(offsets: torch.Tensor, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(_np(offsets), type=pa.int64()), values)


def _arrow_columns(r: Rollouts, level: str) -> dict[str, pa.Array]:
    """The texts and tensor columns of one level, under their Parquet names, in schema order."""
    out = {c.key: getattr(r.texts, name) for name, c in TEXT_COLUMNS.items() if c.level == level}
    for name, col in r.columns().items():
        value = getattr(r, name)
        if value is None or col.level != level or name in _STRUCTURE:
            continue
        out[col.key] = (
            pa.array(_np(value).tolist(), type=pa.list_(pa.bool_())) if col.extra_dims else pa.array(_np(value))
        )
    return out


def to_arrow(rollouts: Rollouts) -> pa.Table:
    """One row per trajectory; steps and their calls as nested lists."""
    r = rollouts
    call_cols = _arrow_columns(r, "call")
    calls = pa.StructArray.from_arrays(list(call_cols.values()), names=list(call_cols))
    step_cols = {**_arrow_columns(r, "step"), "calls": _list(r.call_offsets, calls)}
    steps = pa.StructArray.from_arrays(list(step_cols.values()), names=list(step_cols))
    top = _arrow_columns(r, "trajectory")
    table = pa.table(
        {
            "id": top.pop("id"),
            "group": r.texts.group_names.take(pa.array(_np(r.group))),
            "outcome": top.pop("outcome"),
            "prompt": top.pop("prompt"),
            "steps": _list(r.step_offsets, steps),
            **top,
        }
    )
    meta = {b"stepcredit.format": FORMAT_VERSION.encode()}
    if r.response_mask is not None:
        meta[RESPONSE_LENGTH] = str(r.response_mask.shape[1]).encode()
    return table.replace_schema_metadata(meta)


ROW_GROUP_SIZE = 8192
"""Trajectories per Parquet row group that ``write_parquet`` writes: the unit a reader of a row range
decodes (``read_chunk``), so no larger than the usual streaming chunk."""


def write_parquet(rollouts: Rollouts, path: str | Path) -> None:
    """The batch as one Parquet file, each group's trajectories together — groups in the order of their
    ids (of first appearance, for loaded batches), trajectories within a group in batch order — so the
    file streams in chunks of whole groups (``iter_group_chunks``); a batch whose groups are already
    contiguous keeps its order.
    Written atomically, in row groups of ``ROW_GROUP_SIZE``."""
    r = rollouts
    runs = 1 + int((r.group[1:] != r.group[:-1]).sum()) if r.num_trajectories else 0
    if runs != r.num_groups:  # some group's trajectories are apart
        r = r.select(torch.argsort(r.group, stable=True))
    with atomic_write(path, "wb") as f:
        pq.write_table(to_arrow(r), f, row_group_size=ROW_GROUP_SIZE)


def _grouped(r: Rollouts) -> Rollouts:
    runs = 1 + int((r.group[1:] != r.group[:-1]).sum()) if r.num_trajectories else 0
    return r.select(torch.argsort(r.group, stable=True)) if runs != r.num_groups else r


class RolloutsWriter:
    """Append batch after batch of rollouts to one Parquet file, as ``write_parquet`` would write their
    concatenation (each batch's groups together; the groups of different batches must differ), holding
    one batch at a time. The file appears whole at ``path`` on ``close`` (leaving the ``with`` block);
    an error or an interrupt removes what was written. Batches with response tokens are written to a
    temporary file first and copied, row group by row group, under the longest response length of all
    (``stepcredit.response_length``, known only at the end). ``rows``: trajectories written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._length: int | None = None  # the longest response so far; None: no response tokens
        self._scratch: Any = None

    def __enter__(self) -> RolloutsWriter:
        return self

    def write(self, rollouts: Rollouts) -> None:
        table = to_arrow(_grouped(rollouts))
        meta = dict(table.schema.metadata or {})
        length = meta.pop(RESPONSE_LENGTH, None)
        table = table.replace_schema_metadata(meta)
        if self._writer is None:
            self._schema = table.schema
            if length is not None:
                self._length = int(length)
                self._scratch = self._stack.enter_context(tempfile.TemporaryFile(dir=self.path.parent))  # noqa: SIM115
                sink: IO[Any] = self._scratch
            else:
                sink = self._stack.enter_context(atomic_write(self.path, "wb"))
            self._writer = pq.ParquetWriter(sink, self._schema)
        assert self._schema is not None
        if (length is None) != (self._length is None):
            raise RolloutError("every batch must have response tokens, or none", source=str(self.path))
        if not table.schema.equals(self._schema):
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                raise RolloutError(f"a batch's columns differ from the first batch's ({exc})",
                                   source=str(self.path)) from None
        if length is not None:
            self._length = max(self._length or 0, int(length))
        self._writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None:
            raise RolloutError("no batch was written", source=str(self.path))
        self._writer.close()
        if self._length is not None:
            assert self._schema is not None
            self._scratch.seek(0)
            meta = {**(self._schema.metadata or {}), RESPONSE_LENGTH: str(self._length).encode()}
            with atomic_write(self.path, "wb") as f, pq.ParquetFile(self._scratch) as scratch:
                out = pq.ParquetWriter(f, self._schema.with_metadata(meta))
                for i in range(scratch.num_row_groups):
                    out.write_table(scratch.read_row_group(i).replace_schema_metadata(meta))
                out.close()
        self._stack.close()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
            self._stack.__exit__(kind, exc, tb)  # atomic_write removes its temporary file


def _flat(col: pa.ChunkedArray | pa.Array, name: str, source: str) -> tuple[np.ndarray, pa.Array]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise RolloutError(f"expected a list column, got {arr.type}", source=source, field=name)
    if arr.null_count:
        raise RolloutError("contains nulls", source=source, field=name)
    offsets = arr.offsets.to_numpy()
    return offsets - offsets[0], arr.flatten()


def _tensor(arr: pa.Array, col: Column, source: str) -> torch.Tensor:
    if arr.null_count:
        raise RolloutError("contains nulls", source=source, field=col.key)
    assert col.dtype is not None
    if col.extra_dims:
        offsets, values = _flat(arr, col.key, source)
        widths = set((offsets[1:] - offsets[:-1]).tolist())
        if len(widths) > 1:
            raise RolloutError(f"{col.name} lists differ in length across trajectories", source=source, field=col.key)
        return _tensor(values, Column(col.level, col.dtype, name=col.name), source).reshape(
            len(arr), widths.pop() if widths else 0
        )
    kind = arr.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise RolloutError(f"expected numbers, got {kind}", source=source, field=col.key)
    values = torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy())
    if values.is_floating_point() and not col.dtype.is_floating_point and not torch.equal(values, values.round()):
        raise RolloutError(f"expected integer values, got {kind} with fractions", source=source, field=col.key)
    return col.coerce(values)  # range checks of the dtype (e.g. state keys past int64) happen here


MAX_MASK_CELLS = 1 << 27  # a response mask read from a file: at most 128 Mi tokens (1 GiB as int64 indices)


def _response_length(raw: bytes, ends: torch.Tensor, rows: int, source: str) -> int:
    """The response length the metadata claims, checked against the data: it cannot be shorter than
    the spans, and the (rows, length) token map it sets is at most ``MAX_MASK_CELLS``."""
    try:
        t = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise RolloutError(f"expected an integer, got {show(raw)}", source=source, field="response_length") from None
    need = int(ends.max()) if ends.numel() else 0
    if t < need:
        raise RolloutError(
            f"{t} is shorter than the token spans in the data (they end at {need})",
            source=source,
            field="response_length",
        )
    if rows * t > MAX_MASK_CELLS:
        raise RolloutError(
            f"{t} would make a ({rows}, {t}) token mask, more than {MAX_MASK_CELLS} tokens (the spans in the data "
            f"end at {need})",
            source=source,
            field="response_length",
        )
    return t


def _unique_names(names: list[str], what: str, source: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise RolloutError(f"{what} has two fields named {name!r}", source=source, field=name)
        seen.add(name)


def _strings(arr: pa.Array, key: str, source: str) -> pa.Array:
    """A text column: strings, no nulls, valid UTF-8 (Parquet can hold any bytes)."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise RolloutError(f"expected strings, got {arr.type}", source=source, field=key)
    if arr.null_count:
        raise RolloutError("contains nulls", source=source, field=key)
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        raise RolloutError("not valid UTF-8 text", source=source, field=key) from None
    return arr


def from_arrow(table: pa.Table, source: str = "<table>", *, cls: type[Rollouts] = Rollouts) -> Rollouts:
    """Inverse of ``to_arrow``; groups numbered by first appearance. ``cls``: ``Rollouts`` or a subclass
    that declares more columns (read when the file has them)."""
    from stepcredit.io.tensors import dense_groups

    _unique_names(table.column_names, "the table", source)
    for name in ("id", "group", "outcome", "steps"):
        if name not in table.column_names:
            raise RolloutError(f"missing column {name!r}", source=source, field=name)
    step_off, steps = _flat(table.column("steps"), "steps", source)
    if not pa.types.is_struct(steps.type):
        raise RolloutError("expected a list of step structs", source=source, field="steps")
    _unique_names(steps.type.names, "a step", source)
    if "calls" not in steps.type.names:
        raise RolloutError("missing nested column 'calls'", source=source, field="calls")
    call_off, calls = _flat(steps.field("calls"), "calls", source)
    if not pa.types.is_struct(calls.type):
        raise RolloutError(f"expected a list of call structs, got {calls.type}", source=source, field="calls")
    _unique_names(calls.type.names, "a call", source)
    top = {name: table.column(name).combine_chunks() for name in table.column_names}
    structs = {"trajectory": top, "step": steps, "call": calls}
    has = {
        "trajectory": lambda key: key in top,
        "step": lambda key: key in steps.type.names,
        "call": lambda key: key in calls.type.names,
    }
    get = {"trajectory": lambda key: top[key], "step": steps.field, "call": calls.field}
    cols: dict[str, torch.Tensor] = {}
    columns = cls.columns()
    for name, col in columns.items():
        if name in _STRUCTURE or col.level not in structs:
            continue
        if has[col.level](col.key):
            cols[name] = _tensor(get[col.level](col.key), col, source)
        elif col.required or col.default is not None:  # always written: a file without it is not ours
            raise RolloutError(f"missing nested column {col.key!r}", source=source, field=col.key)
    group_col = table.column("group").combine_chunks()
    if group_col.null_count:
        raise RolloutError("group names must not be null", source=source, field="group")
    group, names = dense_groups(_strings(group_col, "group", source).to_numpy(zero_copy_only=False).astype(str))
    meta = table.schema.metadata or {}
    tokens = [k for k, c in columns.items() if c.together is not None and k != "response_mask"]
    if RESPONSE_LENGTH in meta and "step_token_start" in cols and "step_token_end" in cols:
        start, end = cols["step_token_start"], cols["step_token_end"]
        bad = (start < 0) | (end <= start)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise RolloutError(
                f"step {i}: span [{int(start[i])}, {int(end[i])}) is empty or negative",
                source=source,
                field="token_start",
            )
        t = _response_length(meta[RESPONSE_LENGTH], end, table.num_rows, source)
        traj = segments.segment_ids(torch.as_tensor(step_off))
        cols["response_mask"] = (
            segments.span_index_map(cols["step_token_start"], cols["step_token_end"], traj, (table.num_rows, t)) >= 0
        )
    else:
        for k in tokens:
            cols.pop(k, None)
    texts = {}
    for name, tcol in TEXT_COLUMNS.items():
        if name == "group_names":
            continue
        if has[tcol.level](tcol.key):
            texts[name] = _strings(get[tcol.level](tcol.key), tcol.key, source)
        elif name != "prompt":
            raise RolloutError(f"missing nested column {tcol.key!r}", source=source, field=tcol.key)
    return cls(
        group=group,
        step_offsets=torch.as_tensor(step_off, dtype=torch.int64),
        call_offsets=torch.as_tensor(call_off, dtype=torch.int64),
        **cols,
        texts=Texts.create(table.num_rows, len(names), len(steps), len(calls), group_names=names, **texts),
    )


def read_parquet(path: str | Path, *, cls: type[Rollouts] = Rollouts) -> Rollouts:
    """A batch from a Parquet file written by ``write_parquet``; anything else is one ``RolloutError``."""
    try:
        table = pq.read_table(path)
        return from_arrow(table, str(path), cls=cls)
    except RolloutError:
        raise
    except (pa.ArrowException, OSError, UnicodeError) as exc:  # not Parquet, damaged, names not UTF-8
        raise RolloutError(f"cannot read Parquet ({exc})", source=str(path)) from None
