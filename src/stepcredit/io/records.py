"""Plain Python records that loaders fill, and ``pack`` that turns them into one ``Rollouts``.

Loaders parse a log format into ``TrajectoryRecord`` s (the only place that walks Python objects one
by one); ``pack`` then builds every tensor column in one go.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from stepcredit.errors import RolloutError
from stepcredit.rollouts import TOOL_UNKNOWN, Rollouts, StepKind, Texts

StatePolicy = Literal["history", "distinct"]


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
    """One model turn: its text, the observation it caused, its tool calls."""

    action: str
    observation: str = ""
    calls: list[CallRecord] = field(default_factory=list)
    reward: float = 0.0
    label: int | None = None
    state: int | None = None
    kind: StepKind | None = None  # None: derived (TOOL_CALL if calls, ANSWER if last, else REASON)
    prm: float | None = None
    abandoned: bool = False


@dataclass
class TrajectoryRecord:
    """One trajectory as parsed from a log, before packing."""

    id: str
    group: str
    outcome: float
    steps: list[StepRecord]
    prompt: str = ""
    source: str = ""
    tree: str | None = None
    confidence: float | None = None
    rubric: list[bool] | None = None


def _key(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "little", signed=True)


def history_states(record: TrajectoryRecord) -> list[int]:
    """Decision-point keys from the action history: step ``t``'s key hashes the group and every earlier
    step's actions (each tool call as ``name + canonical arguments``; a text-only turn as one marker).

    Steps of the same group whose earlier *tool calls* are identical therefore share a key — e.g. the
    first step of every trajectory of a task (the same prompt). Observations are not hashed: for
    deterministic tools the call history determines them, and free-text user turns would make every
    key unique. Stable across processes and machines (BLAKE2b, not Python's salted ``hash``).
    """
    h = hashlib.blake2b(record.group.encode(), digest_size=8)
    keys = []
    for step in record.steps:
        keys.append(_key(h.digest()))
        if step.calls:
            for call in step.calls:
                h.update(b"\x1ecall\x1f" + call.name.encode() + b"\x1f" + call.arguments.encode())
        else:
            h.update(b"\x1etext")
    return keys


def distinct_states(record: TrajectoryRecord) -> list[int]:
    """A key of its own for every step (hash of the trajectory id and the step's position)."""
    return [
        _key(hashlib.blake2b(f"{record.id}\x1f{t}".encode(), digest_size=8).digest()) for t in range(len(record.steps))
    ]


def _step_kind(step: StepRecord, is_last: bool) -> int:
    if step.kind is not None:
        return int(step.kind)
    if step.calls:
        return int(StepKind.TOOL_CALL)
    return int(StepKind.ANSWER if is_last else StepKind.REASON)


def pack(records: Sequence[TrajectoryRecord], *, states: StatePolicy = "history") -> Rollouts:
    """Build one validated ``Rollouts`` from records.

    Groups are numbered densely in order of first appearance. ``states="history"`` keys each step by
    its action history (``history_states``) unless the record gives a ``state``; ``"distinct"`` gives
    every step its own key. When no record gives explicit states, the derived keys are renumbered
    densely (0, 1, … in order of first appearance), which makes grouping by decision point a counting
    pass instead of a sort; with explicit states the derived keys stay 64-bit hashes so they cannot
    collide with the given ones. Trees are numbered in order of first appearance; when any record names a
    tree, the column exists and a record without one is a tree of its own. A step's ``tool_ok``
    follows from its calls. Labels: when any step (call)
    has a label the column exists and unlabelled steps (calls) count as 0 (neutral). Confidence:
    records without one get NaN (not stated). Rubric verdicts and PRM scores are all-or-none: when one
    record has them, every record (step) must. Abandoned flags default to False.
    """
    group_index: dict[str, int] = {}
    tree_index: dict[tuple[str, str], int] = {}
    tree: list[int] = []
    group, outcome, step_counts = [], [], []
    kind, reward, state, step_label, call_counts = [], [], [], [], []
    call_ok, call_label = [], []
    texts: dict[str, list[str]] = {
        k: [] for k in ("ids", "prompt", "action", "observation", "call_name", "call_arguments", "call_result")
    }
    any_label = any_call_label = False
    confidence: list[float] = []
    rubric: list[list[bool]] = []
    prm: list[float] = []
    abandoned: list[bool] = []
    with_rubric = next((rec for rec in records if rec.rubric is not None), None)
    with_prm = next((rec for rec in records if any(step.prm is not None for step in rec.steps)), None)
    explicit_state = False
    for rec in records:
        group.append(group_index.setdefault(rec.group, len(group_index)))
        confidence.append(float("nan") if rec.confidence is None else rec.confidence)
        if with_rubric is not None:
            assert with_rubric.rubric is not None
            if rec.rubric is None or len(rec.rubric) != len(with_rubric.rubric):
                raise RolloutError(
                    f"expected {len(with_rubric.rubric)} rubric verdicts (as trajectory {with_rubric.id!r} has), "
                    f"got {None if rec.rubric is None else len(rec.rubric)}",
                    source=rec.source or None,
                    trajectory=rec.id,
                    group=rec.group,
                    field="rubric",
                )
            rubric.append(rec.rubric)
        # a trajectory without a tree id is a tree of its own (a chain)
        tkey = (rec.group, rec.tree) if rec.tree is not None else ("\x00own", rec.id)
        tree.append(tree_index.setdefault(tkey, len(tree_index)))
        outcome.append(rec.outcome)
        step_counts.append(len(rec.steps))
        texts["ids"].append(rec.id)
        texts["prompt"].append(rec.prompt)
        derived = history_states(rec) if states == "history" else distinct_states(rec)
        for t, step in enumerate(rec.steps):
            kind.append(_step_kind(step, t == len(rec.steps) - 1))
            abandoned.append(step.abandoned)
            if with_prm is not None:
                if step.prm is None:
                    raise RolloutError(
                        f"step {t} has no PRM score while other steps (e.g. of trajectory {with_prm.id!r}) have",
                        source=rec.source or None,
                        trajectory=rec.id,
                        group=rec.group,
                        field="prm",
                    )
                prm.append(step.prm)
            reward.append(step.reward)
            if step.state is not None:
                state.append(step.state)
                explicit_state = True
            else:
                state.append(derived[t])
            any_label |= step.label is not None
            step_label.append(step.label or 0)
            call_counts.append(len(step.calls))
            texts["action"].append(step.action)
            texts["observation"].append(step.observation)
            for call in step.calls:
                call_ok.append(call.ok)
                any_call_label |= call.label is not None
                call_label.append(call.label or 0)
                texts["call_name"].append(call.name)
                texts["call_arguments"].append(call.arguments)
                texts["call_result"].append(call.result)
    if not explicit_state:  # only derived keys: number them densely (cheaper to group than 64-bit hashes)
        dense: dict[int, int] = {}
        state = [dense.setdefault(key, len(dense)) for key in state]
    zero = torch.zeros(1, dtype=torch.int64)
    offsets = lambda counts: torch.cat([zero, torch.cumsum(torch.tensor(counts, dtype=torch.int64), 0)])  # noqa: E731
    n, s, c = len(group), len(kind), len(call_ok)
    return Rollouts(
        group=torch.tensor(group, dtype=torch.int64),
        outcome=torch.tensor(outcome, dtype=torch.float32),
        step_offsets=offsets(step_counts),
        kind=torch.tensor(kind, dtype=torch.int8),
        reward=torch.tensor(reward, dtype=torch.float32),
        state=torch.tensor(state, dtype=torch.int64),
        call_offsets=offsets(call_counts),
        call_ok=torch.tensor(call_ok, dtype=torch.int8),
        label=torch.tensor(step_label, dtype=torch.int8) if any_label else None,
        tree=torch.tensor(tree, dtype=torch.int64) if any(rec.tree is not None for rec in records) else None,
        confidence=torch.tensor(confidence) if any(rec.confidence is not None for rec in records) else None,
        rubric=torch.tensor(rubric, dtype=torch.bool).reshape(n, len(with_rubric.rubric or []))
        if with_rubric is not None
        else None,
        prm=torch.tensor(prm, dtype=torch.float32) if with_prm is not None else None,
        abandoned=torch.tensor(abandoned, dtype=torch.bool) if any(abandoned) else None,
        call_label=torch.tensor(call_label, dtype=torch.int8) if any_call_label else None,
        texts=Texts.create(n, len(group_index), s, c, group_names=list(group_index), **texts),
    )
