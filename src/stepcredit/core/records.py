"""Plain Python records, and ``build`` that turns them into one ``Rollouts``.

Loaders and the rollout engine describe trajectories as ``TrajectoryRecord`` s (the only place that
walks Python objects one by one); ``build`` then makes every tensor column in one go, driven by the
column schema: each column that names a ``record`` attribute is read from the records of its level.
Only four columns are derived rather than read: ``group`` and ``tree`` (names numbered densely),
``state`` (decision-point keys, see ``_states``) and ``kind`` (from the calls when not given).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from stepcredit.core.batch import TEXT_COLUMNS, TOOL_UNKNOWN, Rollouts, StepKind, Texts, _offsets
from stepcredit.core.errors import RolloutError
from stepcredit.core.states import key_of

__all__ = ["CallRecord", "StatePolicy", "StepRecord", "TrajectoryRecord", "build", "canonical_json"]

StatePolicy = Literal["history", "distinct"]
_DERIVED = ("group", "tree", "state", "kind")


def canonical_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, no insignificant white space, non-ASCII kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class CallRecord:
    """One tool call: name, canonical JSON arguments, the result text and whether it errored."""

    name: str
    arguments: str
    result: str = ""
    ok: int = TOOL_UNKNOWN
    label: int | None = None


@dataclass
class StepRecord:
    """One model turn: its text, the observation it caused, its tool calls; ``None``: not given."""

    action: str
    observation: str = ""
    calls: list[CallRecord] = field(default_factory=list)
    reward: float = 0.0
    label: int | None = None
    state: int | None = None
    kind: StepKind | None = None  # None: derived (TOOL_CALL if calls, ANSWER if last, else REASON)
    prm: float | None = None
    abandoned: bool | None = None


@dataclass
class TrajectoryRecord:
    """One trajectory as parsed from a log or played by the rollout engine, before building."""

    id: str
    group: str
    outcome: float
    steps: list[StepRecord]
    prompt: str = ""
    source: str = ""
    tree: str | None = None
    confidence: float | None = None
    rubric: list[bool] | None = None


def _step_kind(step: StepRecord, is_last: bool) -> int:
    if step.kind is not None:
        return int(step.kind)
    if step.calls:
        return int(StepKind.TOOL_CALL)
    return int(StepKind.ANSWER if is_last else StepKind.REASON)


def _error(rec: TrajectoryRecord, name: str, message: str) -> RolloutError:
    return RolloutError(message, source=rec.source or None, trajectory=rec.id, group=rec.group, field=name)


def build(
    records: Sequence[TrajectoryRecord], *, states: StatePolicy = "history", cls: type[Rollouts] = Rollouts
) -> Rollouts:
    """Build one validated ``Rollouts`` from records.

    Groups are numbered densely in order of first appearance. ``states="history"`` keys each step by
    its action history (``history_states``) unless the record gives a ``state``; ``"distinct"`` gives
    every step its own key. When no record gives explicit states, the derived keys are renumbered
    densely (0, 1, … in order of first appearance), which makes grouping by decision point a counting
    pass instead of a sort; with explicit states the derived keys stay 64-bit hashes so they cannot
    collide with the given ones. Trees are numbered in order of first appearance; when any record names
    a tree, the column exists and a record without one is a tree of its own.

    Every other column of ``cls`` (``Rollouts`` or a subclass declaring more columns) is read from the
    record attribute its declaration names (records may subclass the record types to carry it). An optional column
    exists when any record gives it; records that do not get the column's fill value (labels 0,
    confidence NaN, abandoned False), and a column without one (PRM scores, rubric verdicts) must be
    given by every record or by none.
    """
    if states not in ("history", "distinct"):
        raise ValueError(f"states must be 'history' or 'distinct', got {states!r}")
    trajs = list(records)
    steps = [(rec, t, step) for rec in trajs for t, step in enumerate(rec.steps)]
    calls = [(rec, t, call) for rec, t, step in steps for call in step.calls]
    rows: dict[str, list[tuple[TrajectoryRecord, int, Any]]] = {
        "trajectory": [(rec, -1, rec) for rec in trajs],
        "step": steps,
        "call": calls,
    }
    cols: dict[str, Any] = {}
    for name, col in cls.columns().items():
        if col.record is None or name in _DERIVED:
            continue
        # a record type without the attribute does not give the column
        values: list[Any] = [getattr(obj, col.record, None) for _, _, obj in rows[col.level]]
        given = next((i for i, v in enumerate(values) if v is not None), None)
        if given is None:
            continue
        if col.fill is None:
            missing = next((i for i, v in enumerate(values) if v is None), None)
            if missing is not None:
                rec, t, _ = rows[col.level][missing]
                where = f"step {t} has" if col.level == "step" else "has"
                raise _error(
                    rec, name, f"{where} no {name} while others (e.g. trajectory {rows[col.level][given][0].id!r}) have"
                )
        else:
            values = [col.fill if v is None else v for v in values]
        if col.extra_dims:
            values = [list(v) for v in values]
            width = len(values[given])
            bad = next((i for i, v in enumerate(values) if len(v) != width), None)
            if bad is not None:
                raise _error(
                    rows[col.level][bad][0],
                    name,
                    f"expected {width} {name} values (as trajectory {rows[col.level][given][0].id!r} has), "
                    f"got {len(values[bad])}",
                )
        assert col.dtype is not None
        tensor = torch.tensor(values, dtype=col.dtype)
        if col.dtype.is_floating_point and bool(torch.isinf(tensor).any()):  # finite values past float32
            rec, t, _ = rows[col.level][int(torch.nonzero(torch.isinf(tensor))[0, 0])]
            where = f"step {t}: " if col.level == "step" else ""
            bad = values[int(torch.nonzero(torch.isinf(tensor))[0, 0])]
            raise _error(rec, name, f"{where}{bad:g} is beyond float32's range (about ±3.4e38)")
        cols[name] = tensor.reshape(len(values), width) if col.extra_dims else tensor
    # the derived columns
    group_index: dict[str, int] = {}
    tree_index: dict[tuple[str, str], int] = {}
    cols["group"] = torch.tensor(
        [group_index.setdefault(rec.group, len(group_index)) for rec in trajs], dtype=torch.int64
    )
    if any(rec.tree is not None for rec in trajs):  # a trajectory without a tree id is a tree of its own (a chain)
        keys = [(rec.group, rec.tree) if rec.tree is not None else ("\x00own", rec.id) for rec in trajs]
        cols["tree"] = torch.tensor([tree_index.setdefault(k, len(tree_index)) for k in keys], dtype=torch.int64)
    cols["kind"] = torch.tensor([_step_kind(step, t == len(rec.steps) - 1) for rec, t, step in steps], dtype=torch.int8)
    derive = history_states if states == "history" else distinct_states
    derived = [key for rec in trajs for key in derive(rec)]
    explicit = [step.state for _, _, step in steps]
    if all(key is None for key in explicit):  # only derived keys: number them densely (cheaper to group)
        dense: dict[int, int] = {}
        state = [dense.setdefault(key, len(dense)) for key in derived]
    else:
        state = [d if e is None else e for d, e in zip(derived, explicit, strict=True)]
    cols["state"] = torch.tensor(state, dtype=torch.int64)
    cols["step_offsets"] = _offsets(torch.tensor([len(rec.steps) for rec in trajs], dtype=torch.int64))
    cols["call_offsets"] = _offsets(torch.tensor([len(step.calls) for _, _, step in steps], dtype=torch.int64))
    texts = {
        name: [getattr(obj, col.record) for _, _, obj in rows[col.level]]
        for name, col in TEXT_COLUMNS.items()
        if col.record is not None
    }
    return cls(
        **cols,
        texts=Texts.create(
            len(trajs), len(group_index), len(steps), len(calls), group_names=list(group_index), **texts
        ),
    )


def history_states(record: TrajectoryRecord) -> list[int]:
    """Decision-point keys from the action history: step ``t``'s key hashes the group and every earlier
    step's actions (each tool call as ``name + canonical arguments``; a text-only turn as one marker).

    Steps of the same group whose earlier *tool calls* are identical therefore share a key — e.g. the
    first step of every trajectory of a task (the same prompt). Observations are not hashed: for
    deterministic tools the call history determines them, and free-text user turns would make every
    key unique.
    """
    h = hashlib.blake2b(record.group.encode(), digest_size=8)
    keys = []
    for step in record.steps:
        keys.append(int.from_bytes(h.digest()[:8], "little", signed=True))
        if step.calls:
            for call in step.calls:
                h.update(b"\x1ecall\x1f" + call.name.encode() + b"\x1f" + call.arguments.encode())
        else:
            h.update(b"\x1etext")
    return keys


def distinct_states(record: TrajectoryRecord) -> list[int]:
    """A key of its own for every step (hash of the trajectory id and the step's position)."""
    return [key_of(f"{record.id}\x1f{t}".encode()) for t in range(len(record.steps))]
