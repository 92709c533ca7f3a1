"""Loaders and writers: chat JSONL / JSON, tau2-bench results, trainer tensors, Parquet."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from stepcredit.errors import RolloutError
from stepcredit.io.chat import ChatFields, iter_json_records, parse_record, read_chat_records, read_json
from stepcredit.io.credit_jsonl import credit_records, read_credit_jsonl, write_credit_jsonl
from stepcredit.io.labels import AIRLINE_WRITE_TOOLS, label_calls
from stepcredit.io.records import (
    CallRecord,
    StatePolicy,
    StepRecord,
    TrajectoryRecord,
    canonical_json,
    history_states,
    pack,
)
from stepcredit.io.tau2 import TAU2_FIELDS, is_tau2, parse_tau2, read_tau2_records
from stepcredit.io.tensors import dense_groups, from_trainer_tensors
from stepcredit.io.writers import from_arrow, read_parquet, to_arrow, to_chat_records, write_chat_jsonl, write_parquet
from stepcredit.rollouts import Rollouts

Format = Literal["auto", "chat", "tau2", "parquet"]
LOG_SUFFIXES = (".json", ".jsonl", ".parquet")

__all__ = [
    "AIRLINE_WRITE_TOOLS",
    "TAU2_FIELDS",
    "CallRecord",
    "ChatFields",
    "StepRecord",
    "TrajectoryRecord",
    "canonical_json",
    "credit_records",
    "dense_groups",
    "from_arrow",
    "from_trainer_tensors",
    "history_states",
    "iter_json_records",
    "label_calls",
    "load",
    "log_files",
    "pack",
    "parse_record",
    "parse_tau2",
    "read_chat_records",
    "read_credit_jsonl",
    "read_json",
    "read_parquet",
    "read_tau2_records",
    "to_arrow",
    "to_chat_records",
    "write_chat_jsonl",
    "write_credit_jsonl",
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
    if fmt not in ("auto", "chat", "tau2"):
        raise RolloutError(f"unknown format {fmt!r}; expected auto, chat, tau2 or parquet", source=str(path))
    if path.suffix == ".jsonl":
        if fmt == "tau2":
            raise RolloutError("a tau2 results file is one JSON object, not JSONL", source=str(path))
        return read_chat_records(path, fields)
    obj = read_json(path)
    if fmt == "tau2" or (fmt == "auto" and is_tau2(obj)):
        return parse_tau2(obj, str(path), labels=labels)
    return read_chat_records(path, fields, obj)


def load(
    path: str | Path | Iterable[str | Path],
    *,
    format: Format = "auto",
    fields: ChatFields | None = None,
    labels: bool = True,
    states: StatePolicy = "history",
    references: Mapping[str, Sequence[dict[str, Any]]] | None = None,
) -> Rollouts:
    """Load one file, a folder of files or a list of files into one ``Rollouts``.

    Trajectories from several files are packed together, so groups with the same name (e.g. a tau2
    task run by several agents) become one group. ``labels`` controls tau2 call labelling; ``states``
    how decision-point keys are derived (see ``records.pack``). ``references`` maps group names to
    reference actions (``{name, arguments, compare_args?}``): every call is then labelled by the rule of
    ``labels.label_calls`` (a group without references labels its writes −1 when they succeed). A
    Parquet file loads as written and cannot be mixed with other files.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    files = [f for p in paths for f in log_files(p)]
    fields = fields or ChatFields()
    parquet = [f for f in files if f.suffix == ".parquet" or format == "parquet"]
    if parquet:
        if len(files) != 1:
            raise RolloutError("a Parquet log loads on its own; got it among other files", source=str(files[0]))
        return read_parquet(files[0])
    records: list[TrajectoryRecord] = []
    for f in files:
        records.extend(_file_records(f, format, fields, labels))
    if not records:
        raise RolloutError("no trajectories found", source=", ".join(map(str, files)))
    if references is not None:
        for rec in records:
            label_calls(rec, references.get(rec.group, []))
    return pack(records, states=states)
