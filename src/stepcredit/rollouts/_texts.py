"""Text views of a batch (host-side, for shaping and scorers that read what the agent wrote)."""

from __future__ import annotations

import json

from stepcredit.rollouts._batch import Rollouts


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
        except json.JSONDecodeError:
            bad_call.append(True)
    coff = r.call_offsets.tolist()
    return [any(bad_call[coff[s] : coff[s + 1]]) for s in range(r.num_steps)]


def trajectory_actions(rollouts: Rollouts) -> list[str]:
    """Each trajectory's assistant texts joined in order (the text an answer-format check reads)."""
    r = rollouts
    action = r.texts.action.to_pylist()
    off = r.step_offsets.tolist()
    return ["\n".join(action[off[i] : off[i + 1]]) for i in range(r.num_trajectories)]


def anchor_observations(rollouts: Rollouts) -> list[str]:
    """The observation each step acted on: the prompt for a trajectory's first step, else the previous
    step's tool results (in call order) followed by its observation text."""
    r = rollouts
    prompt = r.texts.prompt.to_pylist()
    obs = r.texts.observation.to_pylist()
    results = r.texts.call_result.to_pylist()
    coff = r.call_offsets.tolist()
    after = ["\n".join([*results[coff[s] : coff[s + 1]], obs[s]]) for s in range(r.num_steps)]
    first = set(r.step_offsets[:-1].tolist())
    traj = r.step_traj.tolist()
    return [prompt[traj[s]] if s in first else after[s - 1] for s in range(r.num_steps)]
