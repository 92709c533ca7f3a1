"""Streaming Parquet: a dataset (one file or a folder of files) read in group-aligned chunks with
bounded memory, and a credit writer that appends chunk by chunk.

Reading. ``iter_group_chunks`` walks the files in sorted path order, record batch by record batch
(``pyarrow.parquet.ParquetFile.iter_batches``), and cuts the stream only where a new group starts, so
a group is never split across chunks, even when its rows span record batches, row groups or files.
A chunk is emitted as soon as the first row of the group after its last group is seen (or the data
ends), so the reader holds at most one chunk plus one record batch (plus the group names already
finished, to detect interleaving). Each chunk's table goes through ``from_arrow``: validation is
the one of ``read_parquet``.

Rows of a group must be contiguous in dataset order (every stepcredit writer lays them out so). A
group whose rows reappear after another group started is an error naming the file, the row and the
group; it is not silently split. (A two-pass fallback would either re-read the dataset once per
chunk or spill every row to temporary files; sorting the log by group once is cheaper and keeps the
streaming path simple.)

Writing. ``ParquetCreditWriter`` writes the credit file of ``_credit_file`` as Parquet: the same
fields, one row per trajectory with its steps and their calls nested, so
``pq.read_table(path).to_pylist()`` equals ``credit_records`` of the same batches. It appends one
row group per ``write`` and appears at its path only on ``close`` (written to a temporary file beside
it, then renamed); it never overwrites an input.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from stepcredit.core import Rollouts, StepKind
from stepcredit.core.credit import Credit
from stepcredit.core.errors import RolloutError, name
from stepcredit.io.atomic import atomic_write, check_output
from stepcredit.io.parquet import FORMAT_VERSION, RESPONSE_LENGTH, from_arrow

__all__ = [
    "CREDIT_SCHEMA",
    "DEFAULT_BATCH_SIZE",
    "ChunkPlan",
    "ParquetCreditWriter",
    "credit_table",
    "dataset_files",
    "iter_group_chunks",
    "plan_group_chunks",
    "read_chunk",
    "write_credit_parquet",
]

DEFAULT_BATCH_SIZE = 4096
"""Trajectories per record batch read from a file: the unit of memory beside the chunk itself."""

_IGNORED_PREFIXES = (".", "_")  # hidden and temporary files, _SUCCESS / _metadata (pyarrow's convention)


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class _File:
    path: Path
    schema: pa.Schema  # with the file's metadata
    rows: int

    @property
    def source(self) -> str:
        return str(self.path)


def dataset_files(source: str | Path) -> list[Path]:
    """``source`` itself if it is a file, else the ``.parquet`` files below the folder in sorted path
    order (names starting with ``.`` or ``_`` are skipped at any depth: temporary and marker files).
    ``RolloutError`` if the path does not exist or the folder holds no Parquet file."""
    p = Path(source)
    if not p.exists():
        raise RolloutError("no such file or folder", source=str(p))
    if p.is_file():
        return [p]
    files = sorted(
        f
        for f in p.rglob("*.parquet")
        if f.is_file() and not any(part.startswith(_IGNORED_PREFIXES) for part in f.relative_to(p).parts)
    )
    if not files:
        raise RolloutError("no Parquet files (.parquet) in this folder", source=str(p))
    return files


def _cannot_read(exc: BaseException, source: str) -> RolloutError:
    return RolloutError(f"cannot read Parquet ({exc})", source=source)  # the words of read_parquet


def _open(path: Path, cls: type[Rollouts]) -> _File:
    """A file's footer: its schema and row count, the schema checked by ``from_arrow`` on no rows (so a
    missing or mistyped column is refused before any data is read, with ``read_parquet``'s words)."""
    try:
        with pq.ParquetFile(path) as pf:
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        raise _cannot_read(exc, str(path)) from None
    from_arrow(schema.empty_table(), str(path), cls=cls)
    return _File(path, schema, rows)


def _type_difference(a: pa.DataType, b: pa.DataType, where: str) -> str | None:
    """Where ``b`` first differs from ``a`` (``None`` if equal), as a path of field names."""
    if a.equals(b):
        return None
    lists = (pa.types.is_list, pa.types.is_large_list)
    if any(f(a) for f in lists) and any(f(b) for f in lists) and a.id == b.id:
        return _type_difference(a.value_type, b.value_type, where)
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        names_a, names_b = (
            [a.field(i).name for i in range(a.num_fields)],
            [b.field(i).name for i in range(b.num_fields)],
        )
        prefix = f"{where}." if where else ""
        for n in names_a:
            if n not in names_b:
                return f"{prefix}{n} is missing here"
        for n in names_b:
            if n not in names_a:
                return f"{prefix}{n} is here but not there"
        for n in names_a:
            d = _type_difference(a.field(n).type, b.field(n).type, f"{prefix}{n}")
            if d is not None:
                return d
        if names_a != names_b:
            return f"{where or 'the columns'} come in another order ({', '.join(names_b)} vs {', '.join(names_a)})"
        return f"{where or 'the columns'} differ in nullability"
    return f"{where} is {b} here, {a} there"


def _check_same_schema(first: _File, other: _File) -> None:
    """Every file of a dataset has the first file's columns (types and nesting) and, with it, the
    token-span metadata or not; else ``RolloutError`` naming both files."""
    a, b = first.schema, other.schema
    as_struct = pa.struct(list(a.remove_metadata())), pa.struct(list(b.remove_metadata()))
    diff = _type_difference(*as_struct, "")
    if diff is None and (RESPONSE_LENGTH in (a.metadata or {})) != (RESPONSE_LENGTH in (b.metadata or {})):
        has, lacks = (first, other) if RESPONSE_LENGTH in (a.metadata or {}) else (other, first)
        diff = f"{has.source} has token spans (response_length metadata) but {lacks.source} has none"
    if diff is not None:
        raise RolloutError(
            f"columns differ from the dataset's first file {first.source!r}: {diff}; every file of a dataset "
            "must have the same columns",
            source=other.source,
        )


def _runs(batch: pa.RecordBatch, file: _File) -> tuple[np.ndarray, list[bytes]]:
    """The first row of every run of equal group names in ``batch`` and each run's name (as bytes:
    names are compared before ``from_arrow`` checks that they are valid UTF-8)."""
    col = batch.column(batch.schema.get_field_index("group"))
    if col.null_count:
        raise RolloutError("group names must not be null", source=file.source, field="group")
    raw = col.cast(pa.large_binary())
    n = len(raw)
    changed = pc.not_equal(raw.slice(1), raw.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1]).astype(np.int64)
    return starts, raw.take(pa.array(starts)).to_pylist()


def _batches(
    file: _File, batch_size: int, columns: list[str] | None = None, span: tuple[int, int] | None = None
) -> Iterator[pa.RecordBatch]:
    """The file's record batches; ``span=(start, stop)``: only its rows ``[start, stop)``, read from the
    row groups that hold them. A read error names the file."""
    try:
        with pq.ParquetFile(file.path) as pf:
            if span is None:
                yield from pf.iter_batches(batch_size=batch_size, columns=columns)
                return
            start, stop = span
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            groups = [g for g in range(len(sizes)) if bounds[g] < stop and bounds[g + 1] > start]
            at = int(bounds[groups[0]]) if groups else start
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns, row_groups=groups):
                lo, hi = max(start, at), min(stop, at + batch.num_rows)
                if hi > lo:
                    yield batch.slice(lo - at, hi - lo)
                at += batch.num_rows
                if at >= stop:
                    return
    except (pa.ArrowException, OSError, UnicodeError) as exc:
        raise _cannot_read(exc, file.source) from None


def _with_source(exc: RolloutError, source: str) -> RolloutError:
    """``exc`` naming ``source`` (the construction checks of ``Rollouts`` do not know the file)."""
    if exc.source is not None:
        return exc
    return RolloutError(exc.reason, trajectory=exc.trajectory, group=exc.group, field=exc.field, source=source)


def _table(files: list[_File], pieces: list[tuple[int, pa.RecordBatch]]) -> pa.Table:
    """One table of record batches from one or more files, with the token-span metadata they share
    (the longest response length where files differ: ``Rollouts.concat`` pads to it too)."""
    table = pa.Table.from_batches(
        [b.replace_schema_metadata(None) for _, b in pieces], schema=files[pieces[0][0]].schema.remove_metadata()
    )
    metas = [files[i].schema.metadata or {} for i in dict.fromkeys(i for i, _ in pieces)]
    meta = dict(metas[0])
    if RESPONSE_LENGTH in meta and len({m[RESPONSE_LENGTH] for m in metas}) > 1:
        meta[RESPONSE_LENGTH] = str(max(int(m[RESPONSE_LENGTH]) for m in metas)).encode()
    return table.replace_schema_metadata(meta)


def _chunk(files: list[_File], pieces: list[tuple[int, pa.RecordBatch]], cls: type[Rollouts]) -> Rollouts:
    """``from_arrow`` of the pieces; an error names the file whose rows are at fault."""
    used = list(dict.fromkeys(i for i, _ in pieces))
    source = ", ".join(files[i].source for i in used)
    try:
        return from_arrow(_table(files, pieces), source, cls=cls)
    except RolloutError as exc:
        if len(used) == 1:
            raise _with_source(exc, source) from None
        for i in used:  # the chunk spans files: find the one whose rows fail on their own
            try:
                from_arrow(_table(files, [p for p in pieces if p[0] == i]), files[i].source, cls=cls)
            except RolloutError as own:
                raise _with_source(own, files[i].source) from None
        raise _with_source(exc, source) from None  # only the files together fail (e.g. a duplicate id)


def iter_group_chunks(
    source: str | Path,
    chunk_groups: int,
    *,
    cls: type[Rollouts] = Rollouts,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[Rollouts]:
    """The trajectories of a Parquet file or dataset folder as batches of at most ``chunk_groups``
    whole groups, in dataset order.

    ``Rollouts.concat`` of the chunks equals ``from_arrow`` of all the files' rows read as one table
    (for one file: ``read_parquet``), but no more than one chunk and one record batch of
    ``batch_size`` trajectories is held at a time. A group's rows may span record batches, row groups
    and files; they must be contiguous: a group that reappears after another group started raises
    ``RolloutError`` naming the file, the row (0-based, in that file) and the group.

    Files are checked before anything is yielded: each must be readable Parquet with the columns
    ``read_parquet`` needs, and all must have the same columns as the first (an error names both).
    Each chunk is validated by ``from_arrow``: a bad row gives ``read_parquet``'s message, naming its
    file (positions in messages that count steps of the table, e.g. token spans, count within the
    chunk). Trajectory ids are checked to be unique in the whole dataset, whatever the chunk size: within a
    chunk by ``from_arrow``, across chunks by 64-bit hashes of the ids already passed (8 bytes each).

    Args:
        source: a Parquet file, or a folder of them (``dataset_files``: ``*.parquet`` below it in
            sorted path order).
        chunk_groups: most groups per chunk (positive).
        cls: ``Rollouts`` or a subclass that declares more columns (as for ``read_parquet``).
        batch_size: trajectories per record batch read.

    Raises:
        ValueError: ``chunk_groups`` or ``batch_size`` is not a positive integer.
        RolloutError: a missing path, an empty folder or dataset, a file that is not Parquet,
            different columns across files, interleaved groups, or a malformed row (the last two when
            the chunk holding them is reached).
    """
    return _stream(_files(source, chunk_groups, batch_size, cls), chunk_groups, cls, batch_size)


def _files(source: str | Path, chunk_groups: int, batch_size: int, cls: type[Rollouts]) -> list[_File]:
    """The dataset's files, opened and checked (see ``iter_group_chunks``)."""
    for what, value in (("chunk_groups", chunk_groups), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"streaming needs a positive integer {what}, got {value!r}")
    files = [_open(p, cls) for p in dataset_files(source)]
    for f in files[1:]:
        _check_same_schema(files[0], f)
    if not any(f.rows for f in files):
        what = "this file has" if len(files) == 1 else f"the {len(files)} Parquet files here have"
        raise RolloutError(f"no trajectories: {what} no rows", source=str(source))
    return files


Piece = tuple[int, int, pa.RecordBatch]  # (file, the batch's first row in that file, rows)


class _SeenIds:
    """The trajectory ids of the chunks already passed, as sorted arrays of their 64-bit BLAKE2b hashes
    (8 bytes a trajectory, whatever the chunk size; runs of sizes that at least double, merged as they
    grow, so adding n ids costs O(n log n) in all), so an id that reappears in a later chunk is refused
    as it would be in one batch. Ids within a chunk are left to ``from_arrow`` (its message names both
    rows). Two different ids share a hash with a chance of about n² / 2⁶⁵ (3·10⁻⁶ at 10 million)."""

    def __init__(self, files: list[_File]) -> None:
        self.files = files
        self.runs: list[np.ndarray] = []

    @staticmethod
    def _hashes(values: list[bytes | None]) -> np.ndarray:
        raw = b"".join(hashlib.blake2b(v or b"", digest_size=8).digest() for v in values)
        return np.frombuffer(raw, dtype=np.uint64)

    def add(self, pieces: list[Piece]) -> None:
        # raw bytes: a value that is not valid UTF-8 is left to from_arrow's message
        ids = [(i, start, batch.column("id").cast(pa.large_binary()).to_pylist()) for i, start, batch in pieces]
        if not ids:
            return
        h = np.concatenate([self._hashes(values) for _, _, values in ids])
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, h), run.size - 1)
            hit = np.flatnonzero(run[pos] == h)
            if hit.size:
                k = int(hit[0])
                for i, start, values in ids:
                    if k < len(values):
                        raise RolloutError(
                            f"row {start + k}: trajectory id {name(_text(values[k]))} already appeared in an earlier "
                            "chunk; ids must be unique in the whole dataset",
                            source=self.files[i].source,
                            field="id",
                        )
                    k -= len(values)
        self.runs.append(np.sort(h))
        while len(self.runs) > 1 and self.runs[-2].size <= 2 * self.runs[-1].size:
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")  # a merge of two runs


def _walk(
    files: list[_File], chunk_groups: int, batch_size: int, columns: list[str] | None = None
) -> Iterator[list[Piece]]:
    """The dataset's rows in group-aligned chunks of pieces (one pass, record batch by record batch;
    ``columns`` limits what is read — the planner reads the group names and ids only). Trajectory ids
    are checked across chunks (``_SeenIds``)."""
    seen = _SeenIds(files)
    finished: set[bytes] = set()  # groups whose rows ended: seeing one again means interleaving
    current: bytes | None = None  # the group of the last row read
    pending: list[Piece] = []  # the pieces of the chunk being gathered
    started = 0  # groups with rows in pending
    for i, file in enumerate(files):
        row = 0
        for batch in _batches(file, batch_size, columns):
            if batch.num_rows == 0:
                continue
            starts, names = _runs(batch, file)
            cuts = []
            for start, group in zip(starts.tolist(), names, strict=True):
                if group == current:  # the group of the previous batch goes on
                    continue
                if group in finished:
                    raise RolloutError(
                        f"row {row + start}: the group's rows are not contiguous (it reappears after group "
                        f"{name(_text(current))} started); streaming needs each group's rows together: sort "
                        "the log by group",
                        source=file.source,
                        group=_text(group),
                        field="group",
                    )
                if current is not None:
                    finished.add(current)
                current = group
                started += 1
                if started > chunk_groups:  # this group opens the next chunk
                    cuts.append(start)
                    started = 1
            done = 0
            for cut in cuts:
                if cut > done:
                    pending.append((i, row + done, batch.slice(done, cut - done)))
                seen.add(pending)
                yield pending
                pending, done = [], cut
            pending.append((i, row + done, batch.slice(done)))
            row += batch.num_rows
    if pending:
        seen.add(pending)
        yield pending


def _stream(files: list[_File], chunk_groups: int, cls: type[Rollouts], batch_size: int) -> Iterator[Rollouts]:
    for pieces in _walk(files, chunk_groups, batch_size):
        yield _chunk(files, [(i, b) for i, _, b in pieces], cls)


# ------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class ChunkPlan:
    """Where one group-aligned chunk's rows are: ``spans`` of (file, first row, end row) in dataset
    order, so that a worker reads the chunk on its own (``read_chunk``). Plain data: it pickles."""

    index: int  # the chunk's position in the dataset (0, 1, …)
    spans: tuple[tuple[str, int, int], ...]
    rows: int  # trajectories in the chunk


def plan_group_chunks(
    source: str | Path,
    chunk_groups: int,
    *,
    cls: type[Rollouts] = Rollouts,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[ChunkPlan]:
    """The chunks ``iter_group_chunks(source, chunk_groups)`` would yield, as row spans, from one pass
    over the ``group`` column only (the files' schemas are checked as there; rows are validated when a
    chunk is read). For engines that read chunks in other processes: ``read_chunk(plan)`` equals the
    chunk ``iter_group_chunks`` yields at ``plan.index``."""
    files = _files(source, chunk_groups, batch_size, cls)
    plans = []
    for k, pieces in enumerate(_walk(files, chunk_groups, batch_size, columns=["group", "id"])):
        spans: list[tuple[str, int, int]] = []
        for i, start, batch in pieces:
            path = str(files[i].path)
            if spans and spans[-1][0] == path and spans[-1][2] == start:
                spans[-1] = (path, spans[-1][1], start + batch.num_rows)
            else:
                spans.append((path, start, start + batch.num_rows))
        plans.append(ChunkPlan(k, tuple(spans), sum(b.num_rows for _, _, b in pieces)))
    return plans


def read_chunk(plan: ChunkPlan, *, cls: type[Rollouts] = Rollouts, batch_size: int = DEFAULT_BATCH_SIZE) -> Rollouts:
    """The chunk of ``plan`` (``plan_group_chunks``), validated as ``iter_group_chunks`` validates it.
    Reads the row groups its spans overlap: datasets written in row groups no larger than a chunk
    (``write_parquet`` writes ``ROW_GROUP_SIZE``) read little more than the chunk."""
    paths = list(dict.fromkeys(path for path, _, _ in plan.spans))
    files = [_open(Path(p), cls) for p in paths]
    pieces: list[tuple[int, pa.RecordBatch]] = []
    for path, start, stop in plan.spans:
        i = paths.index(path)
        pieces += [(i, batch) for batch in _batches(files[i], batch_size, span=(start, stop))]
    if sum(b.num_rows for _, b in pieces) != plan.rows:
        raise RolloutError(
            f"chunk {plan.index} should hold {plan.rows} rows but {sum(b.num_rows for _, b in pieces)} were read: "
            "the files changed since the chunks were planned",
            source=", ".join(paths),
        )
    return _chunk(files, pieces, cls)


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------ writing
_F32 = pa.float32()
CALL = pa.struct(
    [
        ("name", pa.large_string()),
        ("arguments", pa.large_string()),
        ("result", pa.large_string()),
        ("ok", pa.int8()),
        ("credit", _F32),
    ]
)
STEP = pa.struct(
    [
        ("index", pa.int64()),
        ("kind", pa.string()),
        ("action", pa.large_string()),
        ("observation", pa.large_string()),
        ("reward", _F32),
        ("tool_ok", pa.int8()),
        ("credit", _F32),
        ("calls", pa.large_list(CALL)),
    ]
)
SUMMARY_FIELDS = ("trajectory", "mean", "min", "max", "sum", "positive_share")
CREDIT_SCHEMA = pa.schema(
    [
        ("id", pa.large_string()),
        ("group", pa.large_string()),
        ("outcome", _F32),
        ("recipe", pa.string()),
        ("credit", pa.struct([(k, _F32) for k in SUMMARY_FIELDS])),
        ("steps", pa.large_list(STEP)),
    ]
)
"""The credit file as Parquet: the fields of a credit JSONL record (``_credit_file``), nested the
same way; per-step ``credit`` is ``Credit.per_step``, per-call ``credit`` is ``Credit.per_call``, the
``credit`` struct of a trajectory is ``Credit.summary``."""

_KIND_NAMES = np.array([k.name.lower() for k in sorted(StepKind)])  # indexed by the kind code (0, 1, 2)
assert [int(k) for k in sorted(StepKind)] == list(range(len(StepKind)))


def _f32(t: torch.Tensor) -> pa.Array:
    return pa.array(t.detach().to("cpu", torch.float32).numpy(), type=_F32)


def _i(t: torch.Tensor, kind: pa.DataType) -> pa.Array:
    return pa.array(t.detach().cpu().numpy(), type=kind)


def _nest(offsets: torch.Tensor, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(offsets.cpu().numpy(), type=pa.int64()), values)


def credit_table(rollouts: Rollouts, credit: Credit, recipe: str = "") -> pa.Table:
    """The credit of one batch as a table of ``CREDIT_SCHEMA`` (no Python loop over rows)."""
    r, t = rollouts, rollouts.texts
    credit.check(r)
    calls = pa.StructArray.from_arrays(
        [
            t.call_name,
            t.call_arguments,
            t.call_result,
            _i(r.call_ok, pa.int8()),
            _f32(credit.per_call(r)),
        ],
        fields=list(CALL),
    )
    index = torch.arange(r.num_steps, device=r.device) - r.step_offsets[r.step_traj]
    steps = pa.StructArray.from_arrays(
        [
            _i(index, pa.int64()),
            pa.array(_KIND_NAMES[r.kind.cpu().numpy().astype(np.int64)], type=pa.string()),
            t.action,
            t.observation,
            _f32(r.reward),
            _i(r.tool_ok, pa.int8()),
            _f32(credit.per_step(r)),
            _nest(r.call_offsets, calls),
        ],
        fields=list(STEP),
    )
    summary = credit.summary(r)
    n = r.num_trajectories
    return pa.Table.from_arrays(
        [
            t.ids,
            t.group_names.take(pa.array(r.group.cpu().numpy())),
            _f32(r.outcome),
            pa.array(np.full(n, recipe, dtype=object), type=pa.string()),
            pa.StructArray.from_arrays(
                [_f32(summary[k]) for k in SUMMARY_FIELDS], fields=list(CREDIT_SCHEMA.field("credit").type)
            ),
            _nest(r.step_offsets, steps),
        ],
        schema=CREDIT_SCHEMA,
    )


class ParquetCreditWriter:
    """Append the credit of batch after batch (e.g. the chunks of ``iter_group_chunks``) to one Parquet
    file of ``CREDIT_SCHEMA``, one row group per ``write``.

    The file is written under a temporary name beside ``path`` and renamed to ``path`` on ``close``;
    ``abort`` (or leaving a ``with`` block by an exception) removes it and leaves any old file at
    ``path`` as it was. ``path`` is checked by ``check_output`` first: it may not be one of ``inputs``
    nor lie inside an input folder. The recipe name goes in every row (as in the JSONL credit file)
    and in the file's metadata (``stepcredit.recipe``)::

        with ParquetCreditWriter("credit.parquet", recipe=rec.name, inputs=[log]) as out:
            for chunk in iter_group_chunks(log, 1000):
                result = rec.run(chunk)
                out.write(result.rollouts, result.credit)
    """

    def __init__(self, path: str | Path, *, recipe: str = "", inputs: Iterable[str | Path] = ()) -> None:
        self.path = check_output(path, inputs)
        self.recipe = recipe
        self.rows = 0
        self._target = atomic_write(self.path, "wb")
        sink: IO[Any] = self._target.__enter__()
        meta = {b"stepcredit.format": FORMAT_VERSION.encode(), b"stepcredit.recipe": recipe.encode()}
        try:
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(sink, CREDIT_SCHEMA.with_metadata(meta))
        except BaseException:
            self._target.__exit__(*sys.exc_info())
            raise

    @property
    def closed(self) -> bool:
        return self._writer is None

    def write(self, rollouts: Rollouts, credit: Credit) -> None:
        """Append the credit of one batch (its trajectories, in order)."""
        self.write_table(credit_table(rollouts, credit, self.recipe))

    def write_table(self, table: pa.Table) -> None:
        """Append a table of ``CREDIT_SCHEMA`` (``credit_table``, e.g. made by another process)."""
        if self._writer is None:
            raise ValueError(f"the credit writer for {str(self.path)!r} is closed")
        if not table.schema.equals(CREDIT_SCHEMA):
            raise ValueError(f"expected a table of the credit schema, got columns {table.schema.names}")
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file and move it to ``path`` (a file without rows if nothing was written)."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except BaseException:
            self._target.__exit__(*sys.exc_info())
            raise
        self._target.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop what was written: no file appears at ``path`` (an old one stays)."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
        finally:
            error = RuntimeError("credit writing aborted")
            self._target.__exit__(RuntimeError, error, None)  # removes the temporary file

    def __enter__(self) -> ParquetCreditWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_credit_parquet(
    rollouts: Rollouts, credit: Credit, path: str | Path, recipe: str = "", *, inputs: Iterable[str | Path] = ()
) -> None:
    """The credit of one batch as a Parquet credit file (``ParquetCreditWriter`` with one ``write``)."""
    with ParquetCreditWriter(path, recipe=recipe, inputs=inputs) as out:
        out.write(rollouts, credit)
