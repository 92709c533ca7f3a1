"""The column schema: one declaration per column of ``Rollouts`` (and of its text side table).

A column is declared once, as a dataclass field of ``Rollouts`` or ``Texts``::

    reward: Tensor = column("step", torch.float32, check=Check(finite=True), default=zeros, record="reward")

and that declaration drives everything done to the column: coercion to its dtype, validation (shape
at its level, values), ``select`` / ``concat`` / ``to``, the Parquet layout (trajectory columns at the
top, step columns in the ``steps`` struct, call columns in its ``calls`` struct), the chat JSON fields
and the builder from Python records. Adding a column is one declaration plus, if it needs one, its
check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from stepcredit.core import segments
from stepcredit.core.errors import RolloutError, show

Level = Literal["trajectory", "group", "step", "call", "token"]
"""Where a column's rows live: one per trajectory ``[N]``, group ``[G]``, step ``[S]``, call ``[C]``, or
``(N, T)`` token rows aligned with the trainer's response mask."""

Json = Literal["number", "label", "flag", "integer", "name", "kind", "booleans", "text"]
"""How a column's value is written in a chat JSON record (see ``parse_json``)."""

COLUMN = "stepcredit.column"


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


@dataclass(frozen=True)
class Check:
    """Value checks of a column (all vectorized): finite numbers, no infinities (NaN allowed: "not
    stated"), membership in a set of codes, a closed range, non-negative ids."""

    finite: bool = False
    no_inf: bool = False
    values: tuple[int, ...] | None = None
    low: float | None = None
    high: float | None = None

    def first_bad(self, col: Tensor) -> tuple[int, str] | None:
        """``(row, what was expected)`` of the first row that fails, or None."""
        bad = torch.zeros(col.shape[:1], dtype=torch.bool, device=col.device)
        flat = col.reshape(col.shape[0], -1) if col.dim() > 1 else col[:, None]
        expected = []
        if self.finite and col.is_floating_point():
            bad |= ~torch.isfinite(flat).all(1)
            expected.append("a finite number")
        if self.no_inf and col.is_floating_point():
            bad |= torch.isinf(flat).any(1)
            expected.append("a number or NaN (not stated), not infinity")
        if self.values is not None:
            ok = torch.zeros_like(flat, dtype=torch.bool)
            for v in self.values:
                ok |= flat == v
            bad |= ~ok.all(1)
            expected.append(f"one of {list(self.values)}")
        if self.low is not None:
            bad |= (flat < self.low).any(1)
            expected.append(f">= {self.low:g}")
        if self.high is not None:
            bad |= (flat > self.high).any(1)
            expected.append(f"<= {self.high:g}")
        if not bool(bad.any()):
            return None
        return int(torch.nonzero(bad)[0, 0]), " and ".join(expected)


@dataclass(frozen=True)
class Column:
    """One column: where its rows live, its dtype (None: text), and how it is checked, filled and
    stored.

    Attributes:
        level: trajectory / group / step / call / token.
        dtype: the tensor dtype; ``None`` for a text column (an Arrow ``large_string`` array).
        required: must be given to the constructor.
        default: fills the column when it is not given (called with the batch, sizes known); ``None``
            leaves an optional column absent.
        derived: the default is computed from other columns, so it is filled after them.
        check: value checks.
        offsets: for CSR offset columns, the level they index into.
        extra_dims: dimensions after the row dimension (rubric verdicts ``[N, K]``: 1).
        arrow: the name in Parquet and chat JSON (default: the column name).
        record: the attribute of ``TrajectoryRecord`` / ``StepRecord`` / ``CallRecord`` the builder
            reads (None: the builder derives the column itself).
        fill: the value of rows that lack an optional column when other rows have it (in the builder
            and in ``concat``): a number, ``"own"`` (a fresh id per row) or ``None`` (all or none).
        json: how the value is written in a chat record (None: not part of chat records).
        together: columns with the same tag are given together or not at all (token columns).
        doc: what the column means.
    """

    level: Level
    dtype: torch.dtype | None
    required: bool = False
    default: Callable[[Any], Tensor] | None = None  # of the batch being built (a Rollouts)
    derived: bool = False
    check: Check | None = None
    offsets: Level | None = None
    extra_dims: int = 0
    arrow: str | None = None
    record: str | None = None
    fill: float | int | bool | str | None = None
    json: Json | None = None
    together: str | None = None
    doc: str = ""
    name: str = ""

    @property
    def key(self) -> str:
        """The name in Parquet and chat records."""
        return self.arrow or self.name

    def coerce(self, value: Any) -> Tensor:
        """``value`` (a tensor, array or nested list) as a tensor of this column's dtype, or
        ``RolloutError`` for non-numbers, ragged lists and non-integers in an integer column."""
        dtype, name = self.dtype, self.name
        assert dtype is not None
        if isinstance(value, Tensor):
            if value.dtype.is_floating_point and not dtype.is_floating_point and not torch.equal(value, value.round()):
                raise RolloutError(f"expected integer values, got non-integer {value.dtype}", field=name)
            self._check_range(value)
            return value.to(dtype)
        try:
            arr = np.asarray(value)
        except Exception as exc:  # pragma: no cover - numpy raises many kinds
            raise RolloutError(f"cannot read as an array: {exc}", field=name) from exc
        if arr.dtype.kind not in "biuf":
            raise RolloutError(f"expected numbers, got a ragged or non-numeric sequence ({arr.dtype})", field=name)
        if arr.size and arr.dtype.kind == "f" and not dtype.is_floating_point and not np.array_equal(arr, arr.round()):
            raise RolloutError(f"expected integer values, got {arr.dtype}", field=name)
        values = torch.as_tensor(_signed(arr, name))
        self._check_range(values)
        return values.to(dtype)

    def _check_range(self, values: Tensor) -> None:
        """Values that the cast to this column's dtype would wrap or saturate are an error."""
        dtype = self.dtype
        assert dtype is not None
        if dtype.is_floating_point or dtype == torch.bool or values.numel() == 0 or values.dtype == dtype:
            return
        if values.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch has no min/max for these
            values = torch.from_numpy(_signed(values.cpu().numpy(), self.name))
        info = torch.iinfo(dtype)
        lo, hi = values.min().item(), values.max().item()
        if lo < info.min or hi > info.max or (values.is_floating_point() and max(-lo, hi) >= 2.0**63):
            raise RolloutError(
                f"expected values that fit {dtype}, got {show(lo if lo < info.min else hi)}", field=self.name
            )

    def parse_json(self, value: Any) -> Any:
        """A chat-record value as the builder wants it (``None`` for absent / null), or ``ValueError``
        with what was expected."""
        kind = self.json
        if value is None:
            return None
        if kind == "number":
            if not isinstance(value, int | float):  # a bool is an int: True reads as 1.0
                raise ValueError(f"expected a number, got {type(value).__name__} {show(value)}")
            try:
                x = float(value)
            except OverflowError:
                raise ValueError(f"expected a finite number, got {show(value)}") from None
            if not math.isfinite(x):
                raise ValueError(f"expected a finite number, got {x}")
            return x
        if kind == "label":
            if isinstance(value, bool) or value not in (-1, 0, 1):
                raise ValueError(f"expected a label -1, 0 or 1, got {show(value)}")
            return int(value)
        if kind == "flag":
            if not isinstance(value, bool):
                raise ValueError(f"expected a boolean, got {show(value)}")
            return value
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {show(value)}")
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"expected a signed 64-bit integer, got {show(value)}")
            return value
        if kind == "name":
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ValueError(f"expected a string or integer, got {type(value).__name__} {show(value)}")
            text = str(value)
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ValueError(f"contains a lone surrogate ({text[exc.start]!r}), not valid Unicode") from None
            return text
        if kind == "kind":
            try:
                return StepKind[str(value).upper()]
            except KeyError:
                names = [k.name.lower() for k in StepKind]
                raise ValueError(f"expected one of {names}, got {show(value)}") from None
        if kind == "booleans":
            if not isinstance(value, list) or not all(isinstance(v, bool) for v in value):
                raise ValueError(f"expected a list of booleans (one verdict each), got {show(value)}")
            return value
        raise TypeError(f"column {self.name!r} has no chat JSON form")


def _signed(arr: np.ndarray, name: str) -> np.ndarray:
    """Unsigned integers as int64, exactly; values past int64 are an error (a cast would wrap them)."""
    if arr.dtype.kind != "u":
        return arr
    if arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise RolloutError(f"expected values that fit torch.int64, got {show(int(arr.max()))}", field=name)
    return arr.astype(np.int64)


def column(level: Level, dtype: torch.dtype | None, **spec: Any) -> Any:
    """Declare a column as a dataclass field (default ``None``; the schema in its metadata)."""
    return field(default=None, metadata={COLUMN: Column(level, dtype, **spec)})


_SCHEMAS: dict[type, dict[str, Column]] = {}


def schema(cls: type) -> dict[str, Column]:
    """The columns declared on a dataclass, in declaration order, with their names filled in."""
    if cls in _SCHEMAS:
        return _SCHEMAS[cls]
    out = {}
    for f in cls.__dataclass_fields__.values():  # type: ignore[attr-defined]
        spec = f.metadata.get(COLUMN)
        if spec is not None:
            out[f.name] = Column(**{**spec.__dict__, "name": f.name})
    _SCHEMAS[cls] = out
    return out
