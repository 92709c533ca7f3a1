"""The first stage: loaders and writers for chat JSONL / JSON, tau2-bench results, trainer tensors,
Parquet, and the credit file. ``load`` is the one loading path (the CLI uses it too)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from stepcredit.core import Rollouts, StatePolicy, TrajectoryRecord, build
from stepcredit.core.errors import RolloutError
from stepcredit.io.atomic import atomic_write, check_output
from stepcredit.io.chat import (
    ChatFields,
    ChatWriter,
    parse_record,
    read_chat_records,
    read_json,
    to_chat_records,
    write_chat_jsonl,
)
from stepcredit.io.credit_file import credit_records, read_credit_jsonl, write_credit_jsonl
from stepcredit.io.labels import REFERENCES_FORMAT, check_references, label_calls, read_references
from stepcredit.io.parquet import ROW_GROUP_SIZE, RolloutsWriter, from_arrow, read_parquet, to_arrow, write_parquet
from stepcredit.io.stream import (
    ChunkPlan,
    ParquetCreditWriter,
    credit_table,
    dataset_files,
    iter_group_chunks,
    plan_group_chunks,
    read_chunk,
    write_credit_parquet,
)
from stepcredit.io.tau2 import TAU2_FIELDS, is_tau2, parse_tau2
from stepcredit.io.tensors import from_trainer_tensors

Format = Literal["auto", "chat", "tau2", "parquet"]
FORMATS: tuple[str, ...] = ("auto", "chat", "tau2", "parquet")
LOG_SUFFIXES = (".json", ".jsonl", ".parquet")

__all__ = [
    "FORMATS",
    "REFERENCES_FORMAT",
    "ROW_GROUP_SIZE",
    "TAU2_FIELDS",
    "ChatFields",
    "ChatWriter",
    "ChunkPlan",
    "Format",
    "ParquetCreditWriter",
    "RolloutsWriter",
    "atomic_write",
    "check_output",
    "check_references",
    "credit_records",
    "credit_table",
    "dataset_files",
    "from_arrow",
    "from_trainer_tensors",
    "iter_group_chunks",
    "label_calls",
    "load",
    "load_records",
    "log_files",
    "parse_record",
    "parse_tau2",
    "plan_group_chunks",
    "read_chunk",
    "read_credit_jsonl",
    "read_parquet",
    "read_references",
    "to_arrow",
    "to_chat_records",
    "write_chat_jsonl",
    "write_credit_jsonl",
    "write_credit_parquet",
    "write_parquet",
]


def log_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the log files (.json, .jsonl, .parquet) below a folder, sorted."""
    p = Path(path)
    if not p.exists():
        raise RolloutError("no such file or folder", source=str(p))
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in LOG_SUFFIXES)
    if not files:
        raise RolloutError(f"no log files ({', '.join(LOG_SUFFIXES)}) in this folder", source=str(p))
    return files


def _file_records(path: Path, fmt: str, fields: ChatFields, labels: bool) -> list[TrajectoryRecord]:
    if path.suffix == ".jsonl":
        if fmt == "tau2":
            raise RolloutError("a tau2 results file is one JSON object, not JSONL", source=str(path))
        return read_chat_records(path, fields)
    obj = read_json(path)
    if fmt == "tau2" or (fmt == "auto" and is_tau2(obj)):
        return parse_tau2(obj, str(path), labels=labels, id_field=fields.id)
    return read_chat_records(path, fields, obj)


def load_records(
    path: str | Path | Iterable[str | Path],
    *,
    format: Format = "auto",
    fields: ChatFields | None = None,
    labels: bool = True,
    references: Mapping[str, Sequence[Mapping[str, Any]]] | str | Path | None = None,
) -> list[TrajectoryRecord]:
    """The trajectory records of one file, a folder of files or a list of files (JSON formats; see
    ``load``)."""
    if format not in FORMATS:
        raise RolloutError(f"unknown format {format!r}; expected {', '.join(FORMATS)}", field="format")
    paths = [path] if isinstance(path, str | Path) else list(path)
    files = [f for p in paths for f in log_files(p)]
    fields = fields or ChatFields()
    records: list[TrajectoryRecord] = []
    for f in files:
        if f.suffix == ".parquet" or format == "parquet":
            raise RolloutError("a Parquet log loads as a batch (load), not as records", source=str(f))
        records.extend(_file_records(f, format, fields, labels))
    if not records:
        raise RolloutError("no trajectories found", source=", ".join(map(str, files)))
    if references is not None:
        refs = read_references(references) if isinstance(references, str | Path) else check_references(references)
        source = str(references) if isinstance(references, str | Path) else "references"
        groups = {rec.group for rec in records}
        if not groups & set(refs):
            raise RolloutError(
                f"no reference group matches a loaded group (references name e.g. {next(iter(refs), 'none')!r}; "
                f"the log's groups are e.g. {sorted(groups)[0]!r})",
                source=source,
            )
        for rec in records:
            label_calls(rec, refs.get(rec.group, []))
    return records


def load(
    path: str | Path | Iterable[str | Path],
    *,
    format: Format = "auto",
    fields: ChatFields | None = None,
    labels: bool = True,
    states: StatePolicy = "history",
    references: Mapping[str, Sequence[Mapping[str, Any]]] | str | Path | None = None,
) -> Rollouts:
    """Load one file, a folder of files or a list of files into one ``Rollouts``.

    Trajectories from several files are built together, so groups with the same name (e.g. a tau2
    task run by several agents) become one group. ``fields`` says where chat records keep their fields
    (``ChatFields``; its ``id`` also applies to tau2 simulations). ``labels`` controls tau2 call
    labelling; ``states`` how decision-point keys are derived (see ``stepcredit.core.build``).
    ``references`` (a mapping or a JSON file, see ``read_references``) maps group names to reference
    actions: every call is then labelled by the rule of ``label_calls`` (a group without references
    labels its writes −1 when they succeed); at least one group must match. A Parquet file loads as
    written and cannot be mixed with other files.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    files = [f for p in paths for f in log_files(p)]
    if any(f.suffix == ".parquet" for f in files) or format == "parquet":
        if len(files) != 1:
            raise RolloutError("a Parquet log loads on its own; got it among other files", source=str(files[0]))
        if references is not None:
            raise RolloutError(
                "references label JSON logs; a Parquet log keeps the labels it was written with", source=str(files[0])
            )
        return read_parquet(files[0])
    with _paused_gc():
        records = load_records(files, format=format, fields=fields, labels=labels, references=references)
        return build(records, states=states)


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a log is parsed: parsing makes hundreds of
    thousands of small acyclic objects (freed by reference counting), and the collector's passes over
    them cost ~40% of the load time on the tau2 logs (benchmarks/RESULTS.md)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
