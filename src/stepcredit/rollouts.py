"""The data model: one batch of agent rollouts, columnar and ragged, as torch tensors.

Four levels, each a set of equal-length columns; ragged levels are linked by CSR offsets:

* **trajectory** ``[N]``: ``group`` (dense task/prompt id), ``outcome``, ``step_offsets [N+1]``,
  optional ``tree`` (which rollout tree of its group a trajectory is a root→leaf path of),
  ``confidence`` (stated confidence in [0, 1]; NaN: none stated), ``rubric [N, K]`` (verdicts);
* **step** ``[S]``: one model turn (thought + action) and the observation it caused: ``kind``,
  intermediate ``reward``, ``tool_ok``, ``state`` (key of the decision point the step was taken from),
  optional ``label``, ``prm`` (process-reward score), ``abandoned`` (an abandoned branch / backtrack);
  ``call_offsets [S+1]`` link it to its tool calls;
* **call** ``[C]``: the tool calls a step made (several when calls run in parallel): ``call_ok``,
  optional ``call_label``;
* **token** (optional, for trainers): ``response_mask (N, T)`` and the token span ``[start, end)`` of
  each step's model-generated tokens (and of each tool call inside it).

Texts (trajectory ids, group names, actions, observations, tool names, canonical JSON arguments, tool
results) live in a side table of Arrow string arrays, so the tensor path never touches Python strings.

A ``Rollouts`` is validated once, at construction; nothing downstream re-checks. It is immutable:
``select`` and ``to`` return new objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.errors import RolloutError


class StepKind(IntEnum):
    """What a step (one model turn) did."""

    REASON = 0  # text only, not the last turn (thinking aloud, talking to the user)
    TOOL_CALL = 1  # made at least one tool call
    ANSWER = 2  # text only, the trajectory's last turn


TOOL_OK, TOOL_ERROR, TOOL_UNKNOWN = 1, 0, -1
LABEL_VALUES = (-1, 0, 1)


def tool_ok_from_calls(call_ok: Tensor, call_step: Tensor, num_steps: int) -> Tensor:
    """A step's ``tool_ok`` from its calls: 0 if any call errored, 1 if all succeeded, else −1 (also for
    steps without calls)."""
    n_calls = segments.segment_count(call_step, num_steps)
    n_err = segments.segment_sum((call_ok == TOOL_ERROR).long(), call_step, num_steps)
    n_ok = segments.segment_sum((call_ok == TOOL_OK).long(), call_step, num_steps)
    out = torch.full((num_steps,), TOOL_UNKNOWN, dtype=torch.int8, device=call_ok.device)
    out[(n_calls > 0) & (n_ok == n_calls)] = TOOL_OK
    out[n_err > 0] = TOOL_ERROR
    return out


def _strings(values: Sequence[str] | pa.Array | None, n: int, default: str = "") -> pa.Array:
    if values is None:
        return pa.array([default] * n, type=pa.large_string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    arr = values if isinstance(values, pa.Array) else pa.array(list(values), type=pa.large_string())
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    return arr


@dataclass(frozen=True, eq=False)
class Texts:
    """Side table of texts, one Arrow ``large_string`` array per column.

    ``ids``/``prompt`` are per trajectory, ``group_names`` per group, ``action``/``observation`` per
    step, ``call_name``/``call_arguments`` (canonical JSON)/``call_result`` per tool call.
    """

    ids: pa.Array
    group_names: pa.Array
    prompt: pa.Array
    action: pa.Array
    observation: pa.Array
    call_name: pa.Array
    call_arguments: pa.Array
    call_result: pa.Array

    @classmethod
    def create(
        cls,
        num_trajectories: int,
        num_groups: int,
        num_steps: int,
        num_calls: int,
        **columns: Sequence[str] | pa.Array | None,
    ) -> Texts:
        """Texts with every column given in ``columns`` and the rest blank (ids/group names numbered)."""
        unknown = set(columns) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown text columns: {sorted(unknown)}")
        ids = columns.get("ids")
        names = columns.get("group_names")
        return cls(
            ids=_strings(ids if ids is not None else [str(i) for i in range(num_trajectories)], 0),
            group_names=_strings(names if names is not None else [str(g) for g in range(num_groups)], 0),
            prompt=_strings(columns.get("prompt"), num_trajectories),
            action=_strings(columns.get("action"), num_steps),
            observation=_strings(columns.get("observation"), num_steps),
            call_name=_strings(columns.get("call_name"), num_calls),
            call_arguments=_strings(columns.get("call_arguments"), num_calls),
            call_result=_strings(columns.get("call_result"), num_calls),
        )


def _as_tensor(value: Any, dtype: torch.dtype, name: str) -> Tensor:
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point and not dtype.is_floating_point and not torch.equal(value, value.round()):
            raise RolloutError(f"expected integer values, got non-integer {value.dtype}", field=name)
        return value.to(dtype)
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds
        raise RolloutError(f"cannot read as an array: {exc}", field=name) from exc
    if arr.dtype.kind not in "biuf":
        raise RolloutError(f"expected numbers, got a ragged or non-numeric sequence ({arr.dtype})", field=name)
    if arr.size and arr.dtype.kind == "f" and not dtype.is_floating_point and not np.array_equal(arr, arr.round()):
        raise RolloutError(f"expected integer values, got {arr.dtype}", field=name)
    return torch.as_tensor(arr).to(dtype)


@dataclass(frozen=True, eq=False)
class Rollouts:
    """One batch of rollouts. Construct directly (lists, numpy arrays or tensors) or with a loader.

    Required: ``group [N]`` (dense ids ``0..G-1``, every group non-empty), ``outcome [N]`` (finite) and
    ``step_offsets [N+1]``. Step columns default to: ``kind`` REASON, ``reward`` 0, ``tool_ok`` from the
    step's calls (−1, unknown, without calls), ``state`` all distinct (no two steps share a decision
    point), no tool calls. Token columns are optional but come together: ``response_mask (N, T)`` with
    ``step_token_start/end``.
    """

    group: Tensor
    outcome: Tensor
    step_offsets: Tensor
    kind: Tensor | None = None
    reward: Tensor | None = None
    tool_ok: Tensor | None = None
    state: Tensor | None = None
    call_offsets: Tensor | None = None
    call_ok: Tensor | None = None
    label: Tensor | None = None
    call_label: Tensor | None = None
    tree: Tensor | None = None
    confidence: Tensor | None = None
    rubric: Tensor | None = None
    prm: Tensor | None = None
    abandoned: Tensor | None = None
    response_mask: Tensor | None = None
    step_token_start: Tensor | None = None
    step_token_end: Tensor | None = None
    call_token_start: Tensor | None = None
    call_token_end: Tensor | None = None
    texts: Texts | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction + validation
    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        put("group", _as_tensor(self.group, torch.int64, "group"))
        put("outcome", _as_tensor(self.outcome, torch.float32, "outcome"))
        put("step_offsets", _as_tensor(self.step_offsets, torch.int64, "step_offsets"))
        device = self.group.device
        n = self.group.numel()
        if self.group.dim() != 1 or self.outcome.shape != (n,):
            raise RolloutError(
                f"expected 1-D columns of equal length, got group {tuple(self.group.shape)} "
                f"and outcome {tuple(self.outcome.shape)}",
                field="outcome",
            )
        if self.step_offsets.shape != (n + 1,):
            raise RolloutError(
                f"expected {n + 1} offsets (trajectories + 1), got {tuple(self.step_offsets.shape)}",
                field="step_offsets",
            )
        s = max(int(self.step_offsets[-1]), 0)
        defaults = {
            "kind": (torch.int8, lambda: torch.full((s,), int(StepKind.REASON), dtype=torch.int8)),
            "reward": (torch.float32, lambda: torch.zeros(s)),
            "state": (torch.int64, lambda: torch.arange(s, dtype=torch.int64)),
            "call_offsets": (torch.int64, lambda: torch.zeros(s + 1, dtype=torch.int64)),
        }
        for name, (dtype, make) in defaults.items():
            value = getattr(self, name)
            put(name, (make() if value is None else _as_tensor(value, dtype, name)).to(device))
        c = max(int(self.call_offsets[-1]), 0) if self.call_offsets.numel() else 0
        if self.call_ok is None:
            put("call_ok", torch.full((c,), TOOL_UNKNOWN, dtype=torch.int8, device=device))
        else:
            put("call_ok", _as_tensor(self.call_ok, torch.int8, "call_ok").to(device))
        if self.tool_ok is None:
            if self.call_ok.shape == (c,) and self.call_offsets.shape == (s + 1,):
                put("tool_ok", tool_ok_from_calls(self.call_ok, segments.segment_ids(self.call_offsets), s))
            else:  # wrong shapes: validation reports them
                put("tool_ok", torch.full((s,), TOOL_UNKNOWN, dtype=torch.int8, device=device))
        else:
            put("tool_ok", _as_tensor(self.tool_ok, torch.int8, "tool_ok").to(device))
        optional = {
            "tree": torch.int64,
            "confidence": torch.float32,
            "rubric": torch.bool,
            "prm": torch.float32,
            "abandoned": torch.bool,
            "label": torch.int8,
            "call_label": torch.int8,
            "response_mask": torch.bool,
            "step_token_start": torch.int64,
            "step_token_end": torch.int64,
            "call_token_start": torch.int64,
            "call_token_end": torch.int64,
        }
        for name, dtype in optional.items():
            value = getattr(self, name)
            if value is not None:
                put(name, _as_tensor(value, dtype, name).to(device))
        if self.texts is None:
            put("texts", Texts.create(n, self._num_groups_raw(), s, c))
        self._validate()

    def _num_groups_raw(self) -> int:
        return int(self.group.max()) + 1 if self.group.numel() else 0

    def _where(self, traj: int) -> tuple[str, str]:
        assert self.texts is not None
        tid = str(self.texts.ids[traj].as_py()) if traj < len(self.texts.ids) else str(traj)
        g = int(self.group[traj])
        names = self.texts.group_names
        gname = str(names[g].as_py()) if 0 <= g < len(names) else str(g)
        return tid, gname

    def _fail(self, traj: int, name: str, message: str) -> RolloutError:
        tid, gname = self._where(traj)
        return RolloutError(message, trajectory=tid, group=gname, field=name)

    def _first(self, bad: Tensor) -> int:
        return int(torch.nonzero(bad)[0, 0])

    def _validate(self) -> None:
        n, s = self.num_trajectories, self.num_steps
        texts = self.texts
        assert texts is not None
        # texts first: every later message names trajectories by id
        if len(texts.ids) != n:
            raise RolloutError(f"expected {n} trajectory ids, got {len(texts.ids)}", field="texts.ids")
        if texts.ids.null_count:
            raise RolloutError("trajectory ids must not be null", field="texts.ids")
        if n and len(pc.unique(texts.ids)) != n:
            counts = pc.value_counts(texts.ids)
            dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
            raise RolloutError("trajectory id is not unique in the batch", trajectory=dup, field="id")
        # trajectory level
        if n and int(self.group.min()) < 0:
            i = self._first(self.group < 0)
            raise RolloutError(
                f"group ids must be >= 0, got {int(self.group[i])}",
                trajectory=str(texts.ids[i].as_py()),
                field="group",
            )
        g = self._num_groups_raw()
        if len(texts.group_names) != g:
            raise RolloutError(
                f"expected {g} group names (max group id + 1), got {len(texts.group_names)}",
                field="texts.group_names",
            )
        empty = segments.segment_count(self.group, g) == 0
        if bool(empty.any()):
            k = self._first(empty)
            raise RolloutError(
                f"group ids must be dense 0..{g - 1}; group {k} ({texts.group_names[k].as_py()!r}) has no trajectory",
                field="group",
            )
        if self.tree is not None and self.tree.shape != (n,):
            raise RolloutError(
                f"expected {n} tree ids (one per trajectory), got {tuple(self.tree.shape)}", field="tree"
            )
        if self.confidence is not None:
            if self.confidence.shape != (n,):
                raise RolloutError(f"expected {n} confidences, got {tuple(self.confidence.shape)}", field="confidence")
            bad = torch.isinf(self.confidence)
            if bool(bad.any()):
                i = self._first(bad)
                raise self._fail(i, "confidence", "expected a number or NaN (not stated), got infinity")
        if self.rubric is not None and (self.rubric.dim() != 2 or self.rubric.shape[0] != n):
            raise RolloutError(
                f"expected rubric verdicts of shape ({n}, K), got {tuple(self.rubric.shape)}", field="rubric"
            )
        bad = ~torch.isfinite(self.outcome)
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(i, "outcome", f"expected a finite number, got {float(self.outcome[i])}")
        off = self.step_offsets
        if int(off[0]) != 0:
            raise RolloutError(f"step_offsets must start at 0, got {int(off[0])}", field="step_offsets")
        bad = off[1:] < off[:-1]
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(
                i, "step_offsets", f"offsets decrease ({int(off[i])} -> {int(off[i + 1])}): negative step count"
            )
        # step level
        for name in ("kind", "reward", "tool_ok", "state"):
            col = getattr(self, name)
            if col.shape != (s,):
                raise RolloutError(
                    f"expected {s} values (one per step, step_offsets[-1]), got {tuple(col.shape)}", field=name
                )
        self._check_values("kind", self.kind, [int(k) for k in StepKind], self.step_traj)
        self._check_values("tool_ok", self.tool_ok, [-1, 0, 1], self.step_traj)
        bad = ~torch.isfinite(self.reward)
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(
                int(self.step_traj[i]),
                "reward",
                f"step {self._step_in_traj(i)}: expected a finite number, got {float(self.reward[i])}",
            )
        if self.prm is not None:
            if self.prm.shape != (s,):
                raise RolloutError(f"expected {s} PRM scores (one per step), got {tuple(self.prm.shape)}", field="prm")
            bad = ~torch.isfinite(self.prm)
            if bool(bad.any()):
                i = self._first(bad)
                raise self._fail(
                    int(self.step_traj[i]),
                    "prm",
                    f"step {self._step_in_traj(i)}: expected a finite score, got {float(self.prm[i])}",
                )
        if self.abandoned is not None and self.abandoned.shape != (s,):
            raise RolloutError(f"expected {s} abandoned flags, got {tuple(self.abandoned.shape)}", field="abandoned")
        if self.label is not None:
            if self.label.shape != (s,):
                raise RolloutError(f"expected {s} step labels, got {tuple(self.label.shape)}", field="label")
            self._check_values("label", self.label, list(LABEL_VALUES), self.step_traj)
        # call level
        coff = self.call_offsets
        if coff.shape != (s + 1,):
            raise RolloutError(f"expected {s + 1} offsets (steps + 1), got {tuple(coff.shape)}", field="call_offsets")
        if s >= 0 and int(coff[0]) != 0:
            raise RolloutError(f"call_offsets must start at 0, got {int(coff[0])}", field="call_offsets")
        bad = coff[1:] < coff[:-1]
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(
                int(self.step_traj[i]), "call_offsets", f"offsets decrease at step {self._step_in_traj(i)}"
            )
        c = self.num_calls
        if self.call_ok.shape != (c,):
            raise RolloutError(f"expected {c} values (one per call), got {tuple(self.call_ok.shape)}", field="call_ok")
        self._check_values("call_ok", self.call_ok, [-1, 0, 1], self.step_traj[self.call_step])
        if self.call_label is not None:
            if self.call_label.shape != (c,):
                raise RolloutError(f"expected {c} call labels, got {tuple(self.call_label.shape)}", field="call_label")
            self._check_values("call_label", self.call_label, list(LABEL_VALUES), self.step_traj[self.call_step])
        has_calls = (coff[1:] - coff[:-1]) > 0
        bad = has_calls & (self.kind != int(StepKind.TOOL_CALL))
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(
                int(self.step_traj[i]),
                "kind",
                f"step {self._step_in_traj(i)} has tool calls but kind "
                f"{StepKind(int(self.kind[i])).name}; expected TOOL_CALL",
            )
        derived = tool_ok_from_calls(self.call_ok, self.call_step, s)
        bad = has_calls & (self.tool_ok != derived)
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(
                int(self.step_traj[i]),
                "tool_ok",
                f"step {self._step_in_traj(i)}: tool_ok {int(self.tool_ok[i])} "
                f"disagrees with its calls' call_ok (expected {int(derived[i])}: 0 if any call errored, 1 if all "
                "succeeded, else -1)",
            )
        for name, expected in (("action", s), ("observation", s), ("prompt", n)):
            if len(getattr(texts, name)) != expected:
                raise RolloutError(f"expected {expected} texts, got {len(getattr(texts, name))}", field=f"texts.{name}")
        for name in ("call_name", "call_arguments", "call_result"):
            if len(getattr(texts, name)) != c:
                raise RolloutError(
                    f"expected {c} texts (one per call), got {len(getattr(texts, name))}", field=f"texts.{name}"
                )
        self._validate_tokens()

    def _step_in_traj(self, step: int) -> int:
        return step - int(self.step_offsets[int(self.step_traj[step])])

    def _check_values(self, name: str, col: Tensor, allowed: list[int], row_traj: Tensor) -> None:
        ok = torch.zeros_like(col, dtype=torch.bool)
        for v in allowed:
            ok |= col == v
        if not bool(ok.all()):
            i = self._first(~ok)
            raise self._fail(int(row_traj[i]), name, f"row {i}: expected one of {allowed}, got {int(col[i])}")

    def _validate_tokens(self) -> None:
        token_cols = ("response_mask", "step_token_start", "step_token_end")
        given = [getattr(self, k) is not None for k in token_cols]
        if any(given) and not all(given):
            missing = [k for k, g in zip(token_cols, given, strict=True) if not g]
            raise RolloutError(f"token columns come together; missing {missing}", field=missing[0])
        call_given = [self.call_token_start is not None, self.call_token_end is not None]
        if any(call_given) and not (all(call_given) and all(given)):
            raise RolloutError(
                "call_token_start/end need each other and the step token columns", field="call_token_start"
            )
        if not all(given):
            return
        mask, start, end = self.response_mask, self.step_token_start, self.step_token_end
        assert mask is not None and start is not None and end is not None
        n, s = self.num_trajectories, self.num_steps
        if mask.dim() != 2 or mask.shape[0] != n:
            raise RolloutError(f"expected shape ({n}, T), got {tuple(mask.shape)}", field="response_mask")
        t = mask.shape[1]
        for name, col in (("step_token_start", start), ("step_token_end", end)):
            if col.shape != (s,):
                raise RolloutError(f"expected {s} values (one per step), got {tuple(col.shape)}", field=name)
        bad = (start < 0) | (end > t) | (end <= start)
        if bool(bad.any()):
            i = self._first(bad)
            raise self._fail(
                int(self.step_traj[i]),
                "step_token_start",
                f"step {self._step_in_traj(i)}: span [{int(start[i])}, {int(end[i])}) is empty or outside [0, {t})",
            )
        same = self.step_traj[1:] == self.step_traj[:-1]
        bad = same & (start[1:] < end[:-1])
        if bool(bad.any()):
            i = self._first(bad) + 1
            raise self._fail(
                int(self.step_traj[i]),
                "step_token_start",
                f"step {self._step_in_traj(i)}: span starts at {int(start[i])}, before the previous step ends "
                f"({int(end[i - 1])}); spans must be ordered and not overlap",
            )
        covered = segments.span_coverage(start, end, self.step_traj, (n, t))
        disagree = covered != mask
        if bool(disagree.any()):
            row, col = (int(x) for x in torch.nonzero(disagree)[0])
            what = "is 1 outside every step span" if bool(mask[row, col]) else "is 0 inside a step span"
            raise self._fail(row, "response_mask", f"token {col} {what}")
        if self.call_token_start is not None:
            cs, ce = self.call_token_start, self.call_token_end
            assert ce is not None
            c = self.num_calls
            if cs.shape != (c,) or ce.shape != (c,):
                raise RolloutError(f"expected {c} call spans, got {tuple(cs.shape)}", field="call_token_start")
            step = self.call_step
            bad = (cs < start[step]) | (ce > end[step]) | (ce <= cs)
            if bool(bad.any()):
                i = self._first(bad)
                raise self._fail(
                    int(self.step_traj[step[i]]),
                    "call_token_start",
                    f"call {i}: span [{int(cs[i])}, {int(ce[i])}) is empty or outside its step's span "
                    f"[{int(start[step[i]])}, {int(end[step[i]])})",
                )

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

    @property
    def has_tokens(self) -> bool:
        return self.response_mask is not None

    @cached_property
    def step_traj(self) -> Tensor:
        """Trajectory index of every step ``[S]``."""
        return segments.segment_ids(self.step_offsets)

    @cached_property
    def call_step(self) -> Tensor:
        """Step index of every tool call ``[C]``."""
        return segments.segment_ids(self.call_offsets)

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
        return segments.span_index_map(
            self.step_token_start, self.step_token_end, self.step_traj, tuple(self.response_mask.shape)
        )

    # ------------------------------------------------------------------ derived copies
    def select(self, trajectories: Sequence[int] | Tensor | np.ndarray) -> Rollouts:
        """A new batch with the given trajectories (in that order); groups are renumbered densely in
        order of first appearance."""
        idx = torch.as_tensor(np.asarray(trajectories), dtype=torch.int64).reshape(-1).to(self.device)
        n = self.num_trajectories
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"trajectory index out of range for a batch of {n}")
        idx = idx % max(n, 1)
        counts = self.steps_per_trajectory[idx]
        steps = segments.ranges(self.step_offsets[idx], counts)
        ccounts = self.calls_per_step[steps]
        calls = segments.ranges(self.call_offsets[steps], ccounts)
        old_group = self.group[idx]
        uniq, inverse = torch.unique(old_group, return_inverse=True)
        # renumber by first appearance, so selecting in order keeps group order
        order = torch.argsort(segments.segment_first(inverse, uniq.numel()))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=self.device)
        new_group = rank[inverse]
        assert self.texts is not None
        t = self.texts
        take = lambda arr, ix: arr.take(pa.array(ix.cpu().numpy()))  # noqa: E731
        texts = Texts(
            ids=take(t.ids, idx),
            group_names=take(t.group_names, uniq[order]),
            prompt=take(t.prompt, idx),
            action=take(t.action, steps),
            observation=take(t.observation, steps),
            call_name=take(t.call_name, calls),
            call_arguments=take(t.call_arguments, calls),
            call_result=take(t.call_result, calls),
        )
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        opt = lambda col, ix: None if col is None else col[ix]  # noqa: E731
        return Rollouts(
            group=new_group,
            outcome=self.outcome[idx],
            step_offsets=torch.cat([zero, torch.cumsum(counts, 0)]),
            kind=self.kind[steps],
            reward=self.reward[steps],
            tool_ok=self.tool_ok[steps],
            state=self.state[steps],
            call_offsets=torch.cat([zero, torch.cumsum(ccounts, 0)]),
            call_ok=self.call_ok[calls],
            label=opt(self.label, steps),
            tree=opt(self.tree, idx),
            confidence=opt(self.confidence, idx),
            rubric=opt(self.rubric, idx),
            prm=opt(self.prm, steps),
            abandoned=opt(self.abandoned, steps),
            call_label=opt(self.call_label, calls),
            response_mask=opt(self.response_mask, idx),
            step_token_start=opt(self.step_token_start, steps),
            step_token_end=opt(self.step_token_end, steps),
            call_token_start=opt(self.call_token_start, calls),
            call_token_end=opt(self.call_token_end, calls),
            texts=texts,
        )

    def to(self, device: torch.device | str) -> Rollouts:
        """The same batch with every tensor on ``device`` (texts stay in host memory)."""
        moved = {
            f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def trajectory_id(self, i: int) -> str:
        assert self.texts is not None
        return str(self.texts.ids[i].as_py())

    def group_name(self, g: int) -> str:
        assert self.texts is not None
        return str(self.texts.group_names[g].as_py())

    def __len__(self) -> int:
        return self.num_trajectories

    def __repr__(self) -> str:
        tokens = f", tokens={tuple(self.response_mask.shape)}" if self.response_mask is not None else ""
        labels = ", labelled" if self.label is not None or self.call_label is not None else ""
        return (
            f"Rollouts(trajectories={self.num_trajectories}, groups={self.num_groups}, steps={self.num_steps}, "
            f"calls={self.num_calls}{tokens}{labels}, device={self.device})"
        )
