"""Validation of a ``Rollouts`` batch, run once at construction: shapes first (equal lengths at every
level, offsets that add up, texts that name every row), then the declared value checks of every
column, then what columns must agree on (calls and kinds, tool_ok and call_ok, token spans and the
mask). Every error names the trajectory (id and group) and the field.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import torch
from torch import Tensor

from stepcredit import segments
from stepcredit.errors import RolloutError
from stepcredit.rollouts._columns import Level, StepKind, tool_ok_from_calls
from stepcredit.rollouts._texts import TEXT_COLUMNS, Texts

if TYPE_CHECKING:
    from stepcredit.rollouts._batch import Rollouts

__all__ = ["validate_structure", "validate_values"]


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
