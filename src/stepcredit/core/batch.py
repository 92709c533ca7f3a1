"""The data model: one batch of agent rollouts, columnar and ragged, as torch tensors.

Four levels, each a set of equal-length columns; ragged levels are linked by CSR offsets:

* **trajectory** ``[N]``: ``group`` (dense task/prompt id), ``outcome``, ``step_offsets [N+1]``,
  optional ``tree``, ``confidence``, ``rubric [N, K]``;
* **step** ``[S]``: one model turn (thought + action) and the observation it caused: ``kind``,
  intermediate ``reward``, ``tool_ok``, ``state`` (key of the decision point the step was taken from),
  optional ``label``, ``prm``, ``abandoned``; ``call_offsets [S+1]`` link it to its tool calls;
* **call** ``[C]``: the tool calls a step made (several when calls run in parallel): ``call_ok``,
  optional ``call_label``;
* **token** (optional, for trainers): ``response_mask (N, T)`` and the token span ``[start, end)`` of
  each step's model-generated tokens (and of each tool call inside it).

Every column is declared once, below, with ``column(level, dtype, ...)``; that declaration drives
coercion, validation, ``select`` / ``concat`` / ``to``, Parquet and chat I/O and the record builder
(``stepcredit.core.columns``). Texts (trajectory ids, group names, actions, observations, tool
names, canonical JSON arguments, tool results) live in a side table of Arrow string arrays, so the
tensor path never touches Python strings.

A ``Rollouts`` is validated once, at construction; nothing downstream re-checks. It is immutable:
``select``, ``concat``, ``split_groups`` and ``to`` return new objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
import torch
from torch import Tensor

from stepcredit.core import segments
from stepcredit.core.columns import (
    LABEL_VALUES,
    TOOL_ERROR,
    TOOL_OK,
    TOOL_UNKNOWN,
    Check,
    Column,
    Level,
    StepKind,
    column,
    schema,
    tool_ok_from_calls,
)
from stepcredit.core.errors import RolloutError
from stepcredit.core.texts import TEXT_COLUMNS, Texts

_CODES = Check(values=(TOOL_UNKNOWN, TOOL_ERROR, TOOL_OK))
_LABELS = Check(values=LABEL_VALUES)

__all__ = [
    "COLUMNS",
    "LABEL_VALUES",
    "TEXT_COLUMNS",
    "TOOL_ERROR",
    "TOOL_OK",
    "TOOL_UNKNOWN",
    "Rollouts",
    "StepKind",
    "Texts",
    "tool_ok_from_calls",
]


Vouch = Literal["token_cover", "values"]
"""What a constructor of ``Rollouts.trusted`` guarantees by construction (see there)."""
_VOUCHED: ContextVar[frozenset[str]] = ContextVar("stepcredit_vouched", default=frozenset())


def _full(level: Level, value: float | int, dtype: torch.dtype) -> Any:
    return lambda r: torch.full((r.size(level),), value, dtype=dtype, device=r.device)


def _default_tool_ok(r: Rollouts) -> Tensor:
    return tool_ok_from_calls(r.call_ok, r.call_step, r.num_steps)  # derived: filled after call_ok


# ------------------------------------------------------------------------------------------- Rollouts
@dataclass(frozen=True, eq=False)
class Rollouts:
    """One batch of rollouts. Construct directly (lists, numpy arrays or tensors), with ``build`` from
    Python records, or with a loader.

    Required: ``group [N]`` (dense ids ``0..G-1``, every group non-empty), ``outcome [N]`` (finite) and
    ``step_offsets [N+1]``. Step columns default to: ``kind`` REASON, ``reward`` 0, ``tool_ok`` from the
    step's calls (−1, unknown, without calls), ``state`` all distinct (no two steps share a decision
    point), no tool calls. Token columns are optional but come together: ``response_mask (N, T)`` with
    ``step_token_start/end``.

    Every batch is validated at construction. Constructors that make columns in a way that guarantees
    some checks (the step spans *are* the mask's runs; rows copied from a validated batch) construct
    through ``Rollouts.trusted``, which skips exactly those and runs every other one.
    """

    # trajectory level [N]
    group: Tensor = column("trajectory", torch.int64, required=True, doc="dense task id; checked with the texts")
    outcome: Tensor = column("trajectory", torch.float32, required=True, check=Check(finite=True), record="outcome")
    step_offsets: Tensor = column("trajectory", torch.int64, required=True, offsets="step", doc="CSR into steps")
    tree: Tensor | None = column(
        "trajectory", torch.int64, record="tree", fill="own", json="name", doc="rollout tree of a root→leaf path"
    )
    confidence: Tensor | None = column(
        "trajectory",
        torch.float32,
        check=Check(no_inf=True, low=0.0, high=1.0),
        record="confidence",
        fill=float("nan"),
        json="number",
        doc="stated confidence in [0, 1]; NaN: none stated",
    )
    rubric: Tensor | None = column(
        "trajectory", torch.bool, extra_dims=1, record="rubric", json="booleans", doc="rubric verdicts [N, K]"
    )
    # step level [S]
    kind: Tensor = column(
        "step",
        torch.int8,
        default=_full("step", StepKind.REASON, torch.int8),
        check=Check(values=tuple(int(k) for k in StepKind)),
        record="kind",
        json="kind",
        doc="StepKind",
    )
    reward: Tensor = column(
        "step",
        torch.float32,
        default=_full("step", 0.0, torch.float32),
        check=Check(finite=True),
        record="reward",
        doc="intermediate reward",
    )
    tool_ok: Tensor = column(
        "step",
        torch.int8,
        default=_default_tool_ok,
        derived=True,
        check=_CODES,
        doc="0 if a call errored, 1 if all ran",
    )
    state: Tensor = column(
        "step",
        torch.int64,
        default=lambda r: torch.arange(r.num_steps, device=r.device),
        record="state",
        json="integer",
        doc="decision-point key",
    )
    call_offsets: Tensor = column(
        "step",
        torch.int64,
        offsets="call",
        default=lambda r: torch.zeros(r.num_steps + 1, dtype=torch.int64, device=r.device),
        doc="CSR into calls",
    )
    label: Tensor | None = column("step", torch.int8, check=_LABELS, record="label", fill=0, json="label")
    prm: Tensor | None = column("step", torch.float32, check=Check(finite=True), record="prm", json="number")
    abandoned: Tensor | None = column("step", torch.bool, record="abandoned", fill=False, json="flag")
    # call level [C]
    call_ok: Tensor = column(
        "call", torch.int8, default=_full("call", TOOL_UNKNOWN, torch.int8), check=_CODES, arrow="ok", record="ok"
    )
    call_label: Tensor | None = column(
        "call", torch.int8, check=_LABELS, arrow="label", record="label", fill=0, json="label"
    )
    # token level (N, T) and token spans
    response_mask: Tensor | None = column("token", torch.bool, together="tokens")
    step_token_start: Tensor | None = column("step", torch.int64, arrow="token_start", together="tokens")
    step_token_end: Tensor | None = column("step", torch.int64, arrow="token_end", together="tokens")
    call_token_start: Tensor | None = column("call", torch.int64, arrow="token_start", together="call_tokens")
    call_token_end: Tensor | None = column("call", torch.int64, arrow="token_end", together="call_tokens")
    texts: Texts = None  # type: ignore[assignment]  # filled with blank texts when not given

    # ------------------------------------------------------------------ construction + validation
    @classmethod
    def trusted(cls, vouch: Collection[Vouch], /, **columns: Any) -> Rollouts:
        """Construct ``cls(**columns)`` without the checks that the caller's construction makes true:

        * ``"token_cover"``: the step token spans cover exactly the ``response_mask``'s ones (the
          spans were made from the mask's runs, or both were copied together from a validated
          batch) — skips the ``O(N·T)`` comparison of coverage and mask;
        * ``"values"``: every column holds values that passed its declared ``Check`` (copied from a
          validated batch) — skips those value checks.

        Everything else is still checked: shapes at every level, offsets, unique ids, dense groups,
        the spans' bounds and order, calls inside their steps, kinds and ``tool_ok`` against the calls.
        A wrong vouch gives a batch that breaks the promise of validation: only vouch for what holds
        by construction.
        """
        unknown = set(vouch) - {"token_cover", "values"}
        if unknown:
            raise ValueError(f"unknown vouch {sorted(unknown)}; expected 'token_cover' and/or 'values'")
        token = _VOUCHED.set(frozenset(vouch))
        try:
            return cls(**columns)
        finally:
            _VOUCHED.reset(token)

    def __post_init__(self) -> None:
        vouched = _VOUCHED.get()
        if vouched:  # only the construction ``trusted`` started, not one nested in it
            _VOUCHED.set(frozenset())
        for name, col in self.columns().items():
            value = getattr(self, name)
            if value is None:
                if col.required:
                    raise RolloutError("a required column is missing", field=name)
                continue
            assert col.dtype is not None
            self._put(name, col.coerce(value))
        device = self.group.device
        for name in self.columns():
            value = getattr(self, name)
            if value is not None and value.device != device:
                self._put(name, value.to(device))
        validate_structure(self)
        defaulted = set()
        for name, col in sorted(self.columns().items(), key=lambda item: item[1].derived):  # derived ones last
            if getattr(self, name) is None and col.default is not None:
                self._put(name, col.default(self))
                defaulted.add(name)
        validate_values(
            self, checks="values" not in vouched, token_cover="token_cover" not in vouched, defaulted=defaulted
        )

    def _put(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: only construction sets columns

    @classmethod
    def columns(cls) -> dict[str, Column]:
        """The column schema: every tensor column, in declaration order. A subclass that declares more
        columns (``extra: Tensor | None = column("step", torch.float32, ...)``) gets them everywhere."""
        return schema(cls)

    def size(self, level: Level) -> int:
        """Rows at ``level``: trajectories, groups, steps or calls (token rows: trajectories)."""
        if level in ("trajectory", "token"):
            return self.group.numel()
        if level == "group":
            return self._num_groups_raw()
        if level == "step":
            return max(int(self.step_offsets[-1]), 0)
        return max(int(self.call_offsets[-1]), 0) if self.call_offsets is not None else 0

    def _num_groups_raw(self) -> int:
        return int(self.group.max()) + 1 if self.group.numel() else 0

    # ------------------------------------------------------------------ sizes and derived indices
    @property
    def num_trajectories(self) -> int:
        return self.group.numel()

    @property
    def num_steps(self) -> int:
        return int(self.step_offsets[-1])

    @property
    def num_calls(self) -> int:
        return int(self.call_offsets[-1])

    @property
    def num_groups(self) -> int:
        return self._num_groups_raw()

    @property
    def device(self) -> torch.device:
        return self.group.device

    @cached_property
    def step_traj(self) -> Tensor:
        """Trajectory index of every step ``[S]``."""
        return segments.segment_ids(self.step_offsets)

    @cached_property
    def call_step(self) -> Tensor:
        """Step index of every tool call ``[C]``."""
        return segments.segment_ids(self.call_offsets)

    @cached_property
    def call_traj(self) -> Tensor:
        """Trajectory index of every tool call ``[C]``."""
        return self.step_traj[self.call_step]

    @cached_property
    def step_group(self) -> Tensor:
        """Group of every step ``[S]``."""
        return self.group[self.step_traj]

    @cached_property
    def decision_points(self) -> tuple[Tensor, int]:
        """Dense id of every step's ``(group, state)`` decision point ``[S]``, and how many there are."""
        return segments.unique_pairs(self.step_group, self.state, a_size=self.num_groups)

    @cached_property
    def steps_per_trajectory(self) -> Tensor:
        return self.step_offsets[1:] - self.step_offsets[:-1]

    @cached_property
    def calls_per_step(self) -> Tensor:
        return self.call_offsets[1:] - self.call_offsets[:-1]

    @cached_property
    def calls_per_trajectory(self) -> Tensor:
        return segments.segment_sum(self.calls_per_step, self.step_traj, self.num_trajectories)

    @cached_property
    def token_step_index(self) -> Tensor:
        """``(N, T)`` int64: the step whose span covers each token, −1 where none does."""
        if self.response_mask is None or self.step_token_start is None or self.step_token_end is None:
            raise RolloutError("this batch has no token columns (response_mask, step spans)", field="response_mask")
        shape = (self.response_mask.shape[0], self.response_mask.shape[1])
        return segments.span_index_map(self.step_token_start, self.step_token_end, self.step_traj, shape)

    @cached_property
    def tokens_per_trajectory(self) -> Tensor:
        """``[N]`` int64: each trajectory's model tokens, ``response_mask.sum(1)`` — counted from the step
        spans, which cover exactly the mask's ones (validated), instead of a pass over ``(N, T)``."""
        if self.response_mask is None or self.step_token_start is None or self.step_token_end is None:
            raise RolloutError("this batch has no token columns (response_mask, step spans)", field="response_mask")
        lengths = self.step_token_end - self.step_token_start
        return segments.segment_sum(lengths, self.step_traj, self.num_trajectories)

    def replace(self, **changes: Any) -> Rollouts:
        """``dataclasses.replace(self, **changes)``, validated as any new batch — except that where no
        column the step spans' cover of the mask depends on changes (the mask, the step spans, the
        step offsets), that ``O(N·T)`` comparison is not made again (a new outcome, reward or state)."""
        cover = {"response_mask", "step_token_start", "step_token_end", "step_offsets"}
        columns = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        vouch: set[Vouch] = set() if cover & set(changes) else {"token_cover"}
        return type(self).trusted(vouch, **{**columns, **changes})

    def expand(self, trajectories: Tensor) -> tuple[Tensor, Tensor]:
        """The steps and the calls of ``trajectories`` (in that order): ``(steps [S'], calls [C'])``."""
        steps = segments.ranges(self.step_offsets[trajectories], self.steps_per_trajectory[trajectories])
        calls = segments.ranges(self.call_offsets[steps], self.calls_per_step[steps])
        return steps, calls

    # ------------------------------------------------------------------ derived copies
    def select(self, trajectories: Sequence[int] | Tensor | np.ndarray) -> Rollouts:
        """A new batch with the given trajectories (in that order); groups are renumbered densely in
        order of first appearance."""
        idx = torch.as_tensor(np.asarray(trajectories), dtype=torch.int64).reshape(-1).to(self.device)
        n = self.num_trajectories
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"trajectory index out of range for a batch of {n}")
        idx = idx % max(n, 1)
        steps, calls = self.expand(idx)
        uniq, inverse = torch.unique(self.group[idx], return_inverse=True)
        # renumber by first appearance, so selecting in order keeps group order
        order = torch.argsort(segments.segment_first(inverse, uniq.numel()))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=self.device)
        rows = {"trajectory": idx, "token": idx, "step": steps, "call": calls, "group": uniq[order]}
        out: dict[str, Any] = {}
        for name, col in self.columns().items():
            value = getattr(self, name)
            if value is None:
                continue
            if col.offsets is not None:
                out[name] = _offsets(self._counts(name)[rows[col.level]])
            elif name == "group":
                out[name] = rank[inverse]
            elif col.level == "token":
                out[name] = segments.gather_rows(value, idx)
            else:
                out[name] = value[rows[col.level]]
        # rows of this validated batch: their values and token spans stay valid (ids may repeat: checked)
        return type(self).trusted({"token_cover", "values"}, **out, texts=self.texts.take(rows))

    def _counts(self, offsets_column: str) -> Tensor:
        off: Tensor = getattr(self, offsets_column)
        return off[1:] - off[:-1]

    @classmethod
    def concat(cls, parts: Iterable[Rollouts]) -> Rollouts:
        """One batch of several, in order. Groups are renumbered so that no two parts share one (and so
        neither do trees, which are numbered within their group); trajectory ids are kept (and must
        stay unique). A column some parts lack is filled with
        its declared default for rows (labels 0, confidence NaN, a tree of its own, …); one without a
        fill value (PRM scores, rubric verdicts, token columns) must be in every part or in none.
        Token rows of different lengths are padded on the right with masked tokens."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat needs at least one batch")
        if len(parts) == 1:
            return parts[0]
        device = parts[0].device
        parts = [p.to(device) for p in parts]
        out: dict[str, Any] = {}
        for name, col in cls.columns().items():
            values = [getattr(p, name) for p in parts]
            if col.offsets is not None:
                out[name] = _offsets(torch.cat([p._counts(name) for p in parts]))
                continue
            if all(v is None for v in values):
                continue
            # a part without rows at the column's level lacks nothing
            values = [
                _filled(col, 0, device) if v is None and p.size(col.level) == 0 and col.level != "token" else v
                for v, p in zip(values, parts, strict=True)
            ]
            if any(v is None for v in values):
                if col.fill is None:
                    have = sum(v is not None for v in values)
                    raise RolloutError(
                        f"{have} of {len(parts)} batches have this column; it has no fill value for the others",
                        field=name,
                    )
                assert col.dtype is not None
                values = [
                    v if v is not None else _filled(col, p.size(col.level), device)
                    for v, p in zip(values, parts, strict=True)
                ]
            if name == "group":  # shift each part's groups past the ones before (trees are per group)
                shift = torch.tensor([0] + [int(v.max()) + 1 if v.numel() else 0 for v in values[:-1]]).cumsum(0)
                values = [v + int(k) for v, k in zip(values, shift, strict=True)]
            if col.level == "token":
                t = max(v.shape[1] for v in values)
                values = [torch.nn.functional.pad(v, (0, t - v.shape[1])) for v in values]
            if col.extra_dims and len({v.shape[1:] for v in values}) > 1:
                raise RolloutError(
                    f"batches differ in shape: {sorted({tuple(v.shape[1:]) for v in values})}", field=name
                )
            out[name] = torch.cat(values)
        return cls(**out, texts=Texts.concat([p.texts for p in parts]))

    def split_groups(self, n: int) -> list[Rollouts]:
        """At most ``n`` batches of about equal size (in trajectories) that never split a group: batch
        ``k`` holds a contiguous range of group ids, its trajectories in their order here. So
        ``Rollouts.concat(r.split_groups(n))`` equals ``r`` whenever each group's trajectories are
        contiguous and groups are numbered in order (as loaders and the builder make them)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"split_groups needs a positive number of parts, got {n!r}")
        g = self.num_groups
        if g <= 1 or n == 1:
            return [self]
        sizes = segments.segment_count(self.group, g)
        ends = torch.cumsum(sizes, 0)
        targets = torch.arange(1, n, device=self.device) * self.num_trajectories / n
        cuts = torch.searchsorted(ends.to(targets.dtype), targets) + 1  # first group of each later part
        bounds = torch.unique(torch.cat([torch.tensor([0, g], device=self.device), cuts.clamp(0, g)])).tolist()
        return [
            self.select(torch.nonzero((self.group >= lo) & (self.group < hi)).squeeze(1))
            for lo, hi in itertools.pairwise(bounds)
        ]

    def equals(self, other: Rollouts) -> bool:
        """Same columns (dtype, shape and values; NaN equals NaN) and the same texts."""
        if type(self) is not type(other):
            return False
        for name in self.columns():
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is None:
                continue
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if not (
                torch.equal(a, b)
                or (
                    a.is_floating_point()
                    and torch.equal(a.isnan(), b.isnan())
                    and torch.equal(a.nan_to_num(), b.nan_to_num())
                )
            ):
                return False
        return self.texts.equals(other.texts)

    def to(self, device: torch.device | str) -> Rollouts:
        """The same batch with every tensor on ``device`` (texts stay in host memory)."""
        moved = {
            f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def trajectory_id(self, i: int) -> str:
        return str(self.texts.ids[i].as_py())

    def __len__(self) -> int:
        return self.num_trajectories

    def __repr__(self) -> str:
        tokens = f", tokens={tuple(self.response_mask.shape)}" if self.response_mask is not None else ""
        labels = ", labelled" if self.label is not None or self.call_label is not None else ""
        return (
            f"Rollouts(trajectories={self.num_trajectories}, groups={self.num_groups}, steps={self.num_steps}, "
            f"calls={self.num_calls}{tokens}{labels}, device={self.device})"
        )


COLUMNS: dict[str, Column] = schema(Rollouts)
"""Every tensor column of ``Rollouts``, in declaration order."""


def _offsets(counts: Tensor) -> Tensor:
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _filled(col: Column, rows: int, device: torch.device) -> Tensor:
    assert col.dtype is not None
    if rows == 0:
        return torch.zeros((0,), dtype=col.dtype, device=device)
    if col.fill == "own":
        return torch.arange(rows, dtype=col.dtype, device=device)
    assert not isinstance(col.fill, str) and col.fill is not None
    return torch.full((rows,), col.fill, dtype=col.dtype, device=device)


# ---------------------------------------------------------------------------------------- validation
# Run once at construction: shapes first (equal lengths at every level, offsets that add up, texts that
# name every row), then the declared value checks of every column, then what columns must agree on
# (calls and kinds, tool_ok and call_ok, token spans and the mask). Every error names the trajectory
# (id and group) and the field.


def _where(r: Rollouts, traj: int) -> tuple[str, str]:
    tid = str(r.texts.ids[traj].as_py()) if traj < len(r.texts.ids) else str(traj)
    g = int(r.group[traj])
    names = r.texts.group_names
    gname = str(names[g].as_py()) if 0 <= g < len(names) else str(g)
    return tid, gname


def _fail(r: Rollouts, traj: int, name: str, message: str) -> RolloutError:
    tid, gname = _where(r, traj)
    return RolloutError(message, trajectory=tid, group=gname, field=name)


def _first(bad: Tensor) -> int:
    return int(torch.nonzero(bad)[0, 0])


def _row(r: Rollouts, level: Level, i: int) -> tuple[int, str]:
    """The trajectory of row ``i`` at ``level`` and how to name the row inside it."""
    if level == "step":
        return int(r.step_traj[i]), f"step {_step_in_traj(r, i)}: "
    if level == "call":
        step = int(r.call_step[i])
        return int(r.step_traj[step]), f"call {i - int(r.call_offsets[step])} of step {_step_in_traj(r, step)}: "
    return i, ""


def _check_offsets(r: Rollouts, name: str, rows: int) -> None:
    off = getattr(r, name)
    what = "trajectories" if name == "step_offsets" else "steps"
    if off.shape != (rows + 1,):
        raise RolloutError(f"expected {rows + 1} offsets ({what} + 1), got {tuple(off.shape)}", field=name)
    if int(off[0]) != 0:
        raise RolloutError(f"{name} must start at 0, got {int(off[0])}", field=name)
    bad = off[1:] < off[:-1]
    if bool(bad.any()):
        i = _first(bad)
        if name == "step_offsets":
            raise _fail(r, i, name, f"offsets decrease ({int(off[i])} -> {int(off[i + 1])}): negative step count")
        raise _fail(r, int(r.step_traj[i]), name, f"offsets decrease at step {_step_in_traj(r, i)}")


def validate_structure(r: Rollouts) -> None:
    """Shapes: equal lengths at every level, offsets that add up, texts that name every row."""
    n = r.group.numel()
    if r.group.dim() != 1 or r.outcome.shape != (n,):
        raise RolloutError(
            f"expected 1-D columns of equal length (one per trajectory), got group {tuple(r.group.shape)} "
            f"and outcome {tuple(r.outcome.shape)}",
            field="outcome",
        )
    if r.texts is None:
        object.__setattr__(r, "texts", Texts.create(n, r.num_groups, 0, 0))
        blank = True
    else:
        blank = False
    texts = r.texts
    # ids first: every later message names trajectories by them
    if len(texts.ids) != n:
        raise RolloutError(f"expected {n} trajectory ids, got {len(texts.ids)}", field="texts.ids")
    if texts.ids.null_count:
        raise RolloutError("trajectory ids must not be null", field="texts.ids")
    if n and len(pc.unique(texts.ids)) != n:
        counts = pc.value_counts(texts.ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise RolloutError("trajectory id is not unique in the batch", trajectory=dup, field="id")
    if n and int(r.group.min()) < 0:
        i = _first(r.group < 0)
        raise RolloutError(
            f"group ids must be >= 0, got {int(r.group[i])}", trajectory=str(texts.ids[i].as_py()), field="group"
        )
    g = r.num_groups
    if len(texts.group_names) != g:
        raise RolloutError(
            f"expected {g} group names (max group id + 1), got {len(texts.group_names)}", field="texts.group_names"
        )
    if g and bool((segments.segment_count(r.group, g) == 0).any()):
        empty = int(torch.nonzero(segments.segment_count(r.group, g) == 0)[0, 0])
        raise RolloutError(
            f"group ids must be dense 0..{g - 1}; group {empty} has no trajectory",
            group=str(texts.group_names[empty].as_py()),
            field="group",
        )
    _check_offsets(r, "step_offsets", n)
    s = r.size("step")
    if r.call_offsets is not None:
        _check_offsets(r, "call_offsets", s)
    c = r.size("call")
    if blank:  # blank texts for the steps and calls now that their numbers are known
        object.__setattr__(r, "texts", Texts.create(n, g, s, c, ids=texts.ids, group_names=texts.group_names))
    for name, col in r.columns().items():
        value = getattr(r, name)
        if value is None or col.offsets is not None or name in ("group", "outcome"):
            continue
        if col.level == "token":
            if value.dim() != 2 or value.shape[0] != n:
                raise RolloutError(f"expected shape ({n}, T), got {tuple(value.shape)}", field=name)
        elif col.extra_dims:
            if value.dim() != 1 + col.extra_dims or value.shape[0] != n:
                raise RolloutError(f"expected shape ({n}, K), got {tuple(value.shape)}", field=name)
        elif value.shape != (r.size(col.level),):
            extra = ", step_offsets[-1]" if col.level == "step" else ""
            raise RolloutError(
                f"expected {r.size(col.level)} values (one per {col.level}{extra}), got {tuple(value.shape)}",
                field=name,
            )
    for name, col in TEXT_COLUMNS.items():
        got = len(getattr(r.texts, name))
        if got != r.size(col.level):
            raise RolloutError(
                f"expected {r.size(col.level)} texts (one per {col.level}), got {got}", field=f"texts.{name}"
            )
    for tag in ("tokens", "call_tokens"):
        names = [k for k, col in r.columns().items() if col.together == tag]
        given = [getattr(r, k) is not None for k in names]
        if any(given) and not all(given):
            missing = [k for k, g_ in zip(names, given, strict=True) if not g_]
            raise RolloutError(f"token columns come together; missing {missing}", field=missing[0])
    if r.call_token_start is not None and r.response_mask is None:
        raise RolloutError("call token spans need the step token columns", field="call_token_start")


def validate_values(
    r: Rollouts, *, checks: bool = True, token_cover: bool = True, defaulted: Collection[str] = ()
) -> None:
    """The declared value checks of every column (``checks``), then what columns must agree on;
    ``token_cover``: also that the step spans cover exactly the mask's ones (``O(N·T)``).
    ``defaulted``: columns just filled with their defaults, valid by construction (not checked)."""
    for name, col in r.columns().items():
        value = getattr(r, name)
        if not checks or value is None or col.check is None or name in defaulted:
            continue
        failed = col.check.first_bad(value)
        if failed is not None:
            i, expected = failed
            traj, where = _row(r, col.level, i)
            got = value[i].tolist()
            raise _fail(r, traj, name, f"{where}expected {expected}, got {got}")
    s = r.num_steps
    has_calls = r.calls_per_step > 0
    bad = has_calls & (r.kind != int(StepKind.TOOL_CALL))
    if bool(bad.any()):
        i = _first(bad)
        raise _fail(
            r,
            int(r.step_traj[i]),
            "kind",
            f"step {_step_in_traj(r, i)} has tool calls but kind {StepKind(int(r.kind[i])).name}; expected TOOL_CALL",
        )
    derived = r.tool_ok if "tool_ok" in defaulted else tool_ok_from_calls(r.call_ok, r.call_step, s)
    bad = has_calls & (r.tool_ok != derived)
    if bool(bad.any()):
        i = _first(bad)
        raise _fail(
            r,
            int(r.step_traj[i]),
            "tool_ok",
            f"step {_step_in_traj(r, i)}: tool_ok {int(r.tool_ok[i])} "
            f"disagrees with its calls' call_ok (expected {int(derived[i])}: 0 if any call errored, 1 if all "
            "succeeded, else -1)",
        )
    if r.response_mask is not None:
        _validate_tokens(r, token_cover)


def _step_in_traj(r: Rollouts, step: int) -> int:
    return step - int(r.step_offsets[int(r.step_traj[step])])


def _validate_tokens(r: Rollouts, token_cover: bool = True) -> None:
    mask, start, end = r.response_mask, r.step_token_start, r.step_token_end
    assert mask is not None and start is not None and end is not None
    n, t = mask.shape
    bad = (start < 0) | (end > t) | (end <= start)
    if bool(bad.any()):
        i = _first(bad)
        raise _fail(
            r,
            int(r.step_traj[i]),
            "step_token_start",
            f"step {_step_in_traj(r, i)}: span [{int(start[i])}, {int(end[i])}) is empty or outside [0, {t})",
        )
    same = r.step_traj[1:] == r.step_traj[:-1]
    bad = same & (start[1:] < end[:-1])
    if bool(bad.any()):
        i = _first(bad) + 1
        raise _fail(
            r,
            int(r.step_traj[i]),
            "step_token_start",
            f"step {_step_in_traj(r, i)}: span starts at {int(start[i])}, before the previous step ends "
            f"({int(end[i - 1])}); spans must be ordered and not overlap",
        )
    if token_cover:
        covered = segments.span_coverage(start, end, r.step_traj, (n, t))
        disagree = covered != mask
        if bool(disagree.any()):
            row, col = (int(x) for x in torch.nonzero(disagree)[0])
            what = "is 1 outside every step span" if bool(mask[row, col]) else "is 0 inside a step span"
            raise _fail(r, row, "response_mask", f"token {col} {what}")
    if r.call_token_start is not None:
        cs, ce = r.call_token_start, r.call_token_end
        assert ce is not None
        step = r.call_step
        bad = (cs < start[step]) | (ce > end[step]) | (ce <= cs)
        if bool(bad.any()):
            i = _first(bad)
            raise _fail(
                r,
                int(r.step_traj[step[i]]),
                "call_token_start",
                f"call {i}: span [{int(cs[i])}, {int(ce[i])}) is empty or outside its step's span "
                f"[{int(start[step[i]])}, {int(end[step[i]])})",
            )
