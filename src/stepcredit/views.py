"""Text views over a batch: what each step did, read and acted on, as host-side Python strings — for
reward shaping, selection, scorers and estimators that read what the agent wrote. Pure functions of a
``Rollouts``; they never change it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from stepcredit.core import Rollouts
from stepcredit.core.states import anchor_observations

__all__ = [
    "MAX_ARGUMENT_DEPTH",
    "anchor_observations",
    "argument_leaves",
    "malformed_call_steps",
    "seen_before_steps",
    "step_action_texts",
    "trajectory_actions",
]


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
