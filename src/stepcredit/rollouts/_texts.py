"""The text side table (``Texts``, one Arrow string array per text column) and text views of a batch
(host-side, for shaping and scorers that read what the agent wrote)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from torch import Tensor

from stepcredit.rollouts._columns import Column, column, schema

if TYPE_CHECKING:
    from stepcredit.rollouts._batch import Rollouts

__all__ = [
    "TEXT_COLUMNS",
    "Texts",
    "anchor_observations",
    "argument_leaves",
    "malformed_call_steps",
    "seen_before_steps",
    "step_action_texts",
    "trajectory_actions",
]


def _strings(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    arr = values if isinstance(values, pa.Array) else pa.array(list(values), type=pa.large_string())
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


def step_action_texts(rollouts: Rollouts) -> list[str]:
    """What each step *did*: its tool calls rendered as ``name canonical_arguments`` (one line per
    call, in order), or its text for a step without calls."""
    r = rollouts
    action = r.texts.action.to_pylist()
    names, args = r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist()
    coff = r.call_offsets.tolist()
    return [
        "\n".join(f"{names[c]} {args[c]}" for c in range(coff[s], coff[s + 1])) if coff[s + 1] > coff[s] else action[s]
        for s in range(r.num_steps)
    ]


def malformed_call_steps(rollouts: Rollouts) -> list[bool]:
    """Per step: does any of its calls carry arguments that are not valid JSON (kept verbatim by the
    loaders, so a format error of the model's)?"""
    r = rollouts
    bad_call = []
    for text in r.texts.call_arguments.to_pylist():
        try:
            json.loads(text)
            bad_call.append(False)
        except (ValueError, RecursionError):
            bad_call.append(True)
    coff = r.call_offsets.tolist()
    return [any(bad_call[coff[s] : coff[s + 1]]) for s in range(r.num_steps)]


MAX_ARGUMENT_DEPTH = 32


def argument_leaves(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """``(parameter path, leaf)`` of every scalar in a call's parsed JSON arguments (``"trip.legs"``;
    list positions do not enter the path). Below ``MAX_ARGUMENT_DEPTH`` levels the rest of the value is
    one leaf as it is (a dict or list: no agent read it anywhere)."""
    if depth > MAX_ARGUMENT_DEPTH:
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from argument_leaves(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from argument_leaves(v, path, depth + 1)
    else:
        yield path, value


def seen_before_steps(rollouts: Rollouts) -> list[str]:
    """Per step, what the agent had read before it, casefolded: its trajectory's prompt, then every
    earlier step's tool results (in call order) and observation, one per line."""
    r = rollouts
    prompt = r.texts.prompt.to_pylist()
    results = r.texts.call_result.to_pylist()
    observations = r.texts.observation.to_pylist()
    soff, coff = r.step_offsets.tolist(), r.call_offsets.tolist()
    out: list[str] = []
    for i in range(r.num_trajectories):
        parts = [prompt[i].casefold()]
        for s in range(soff[i], soff[i + 1]):
            out.append("\n".join(parts))
            parts.extend(x.casefold() for x in (*results[coff[s] : coff[s + 1]], observations[s]))
    return out


def trajectory_actions(rollouts: Rollouts) -> list[str]:
    """Each trajectory's assistant texts joined in order (the text an answer-format check reads)."""
    r = rollouts
    action = r.texts.action.to_pylist()
    off = r.step_offsets.tolist()
    return ["\n".join(action[off[i] : off[i + 1]]) for i in range(r.num_trajectories)]


def anchor_observations(rollouts: Rollouts) -> list[str]:
    """The observation each step acted on: the prompt for a trajectory's first step, else the previous
    step's (non-empty) tool results, in call order, followed by its observation text."""
    r = rollouts
    prompt = r.texts.prompt.to_pylist()
    obs = r.texts.observation.to_pylist()
    results = r.texts.call_result.to_pylist()
    coff = r.call_offsets.tolist()
    # empty results (a trainer batch knows no tool outputs) add no blank lines
    after = ["\n".join([*(x for x in results[coff[s] : coff[s + 1]] if x), obs[s]]) for s in range(r.num_steps)]
    first = set(r.step_offsets[:-1].tolist())
    traj = r.step_traj.tolist()
    return [prompt[traj[s]] if s in first else after[s - 1] for s in range(r.num_steps)]
