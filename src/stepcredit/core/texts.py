"""The text side table of a batch: ``Texts``, one Arrow string array per text column, declared like
the tensor columns (text views over a batch are in ``stepcredit.views``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from torch import Tensor

from stepcredit.core.columns import Column, column, schema
from stepcredit.core.errors import RolloutError

__all__ = ["TEXT_COLUMNS", "Texts"]


def _strings(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    try:
        arr = values if isinstance(values, pa.Array) else pa.array(list(values), type=pa.large_string())
    except UnicodeEncodeError as exc:
        bad = exc.object[max(exc.start - 20, 0) : exc.end + 20] if isinstance(exc.object, str) else ""
        raise RolloutError(f"a text holds a lone surrogate, which is not valid UTF-8 (near {bad!r})") from None
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    return arr


def _numbered(n: int) -> pa.Array:
    """``"0", "1", …, str(n - 1)`` (Arrow's integer-to-text cast: the same digits as ``str``)."""
    return pa.array(np.arange(n, dtype=np.int64)).cast(pa.large_string())


def _blank(n: int) -> pa.Array:
    """``n`` empty strings, made from their offsets alone."""
    offsets = pa.py_buffer(np.zeros(n + 1, dtype=np.int64))
    return pa.Array.from_buffers(pa.large_string(), n, [None, offsets, pa.py_buffer(b"")])


@dataclass(frozen=True, eq=False)
class Texts:
    """Side table of texts, one Arrow ``large_string`` array per column (declared like tensor columns)."""

    ids: pa.Array = column("trajectory", None, arrow="id", record="id", doc="trajectory ids (unique)")
    group_names: pa.Array = column("group", None, doc="the task / prompt each group id stands for")
    prompt: pa.Array = column("trajectory", None, record="prompt", doc="the prompt text")
    action: pa.Array = column("step", None, record="action", doc="what the model wrote in the turn")
    observation: pa.Array = column("step", None, record="observation", doc="what came back, tool results aside")
    call_name: pa.Array = column("call", None, arrow="name", record="name", doc="the tool's name")
    call_arguments: pa.Array = column("call", None, arrow="arguments", record="arguments", doc="canonical JSON")
    call_result: pa.Array = column("call", None, arrow="result", record="result", doc="the tool's result text")

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
        unknown = set(columns) - set(TEXT_COLUMNS)
        if unknown:
            raise TypeError(f"unknown text columns: {sorted(unknown)}")
        sizes = {"trajectory": num_trajectories, "group": num_groups, "step": num_steps, "call": num_calls}
        numbered = {"ids": num_trajectories, "group_names": num_groups}
        out = {}
        for name, col in TEXT_COLUMNS.items():
            given = columns.get(name)
            if given is None:
                out[name] = _numbered(numbered[name]) if name in numbered else _blank(sizes[col.level])
            else:
                out[name] = _strings(given)
        return cls(**out)

    def take(self, rows: Mapping[str, Tensor]) -> Texts:
        """The rows ``rows[level]`` of every column."""
        return Texts(
            **{n: getattr(self, n).take(pa.array(rows[c.level].cpu().numpy())) for n, c in TEXT_COLUMNS.items()}
        )

    @staticmethod
    def concat(parts: Sequence[Texts]) -> Texts:
        return Texts(**{n: pa.concat_arrays([getattr(p, n) for p in parts]) for n in TEXT_COLUMNS})

    def equals(self, other: Texts) -> bool:
        return all(getattr(self, n).equals(getattr(other, n)) for n in TEXT_COLUMNS)


TEXT_COLUMNS: dict[str, Column] = schema(Texts)
