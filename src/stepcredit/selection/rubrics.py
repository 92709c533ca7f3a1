"""Rubric checks computed from the trajectory itself: ``fn(rollouts) -> [N] bool``.

Named checks for ``rubric_gate`` (``rubrics: [final_answer_nonempty, ...]``); any other name of the
form ``module:function`` is imported. None of them reads audit labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stepcredit.core import TOOL_ERROR, Rollouts, StepKind, segments
from stepcredit.core.registry import import_callable

Rubric = Callable[[Rollouts], Tensor]


def _last_step(r: Rollouts) -> Tensor:
    return (r.step_offsets[1:] - 1).clamp_min(0)


def final_answer_nonempty(r: Rollouts) -> Tensor:
    """The last step is a text answer (not a tool call) and is not blank."""
    assert r.texts is not None
    has = r.steps_per_trajectory > 0
    last = _last_step(r)
    if r.num_steps == 0:
        return torch.zeros(r.num_trajectories, dtype=torch.bool, device=r.device)
    blank = torch.tensor([not t.strip() for t in r.texts.action.to_pylist()], dtype=torch.bool, device=r.device)
    return has & (r.kind[last] == int(StepKind.ANSWER)) & ~blank[last]


def no_tool_error_after_last_success(r: Rollouts) -> Tensor:
    """No tool call errored after the trajectory's last successful call (it did not end on a failure)."""
    n = r.num_trajectories
    call_traj = r.call_traj
    pos = torch.arange(r.num_calls, device=r.device)
    ok = r.call_ok == 1
    last_ok = segments.segment_last(call_traj[ok], n, positions=pos[ok])
    late_error = (r.call_ok == TOOL_ERROR) & (pos > last_ok[call_traj])
    return segments.segment_sum(late_error.long(), call_traj, n) == 0


def no_tool_errors(r: Rollouts) -> Tensor:
    """No tool call errored."""
    call_traj = r.call_traj
    return segments.segment_sum((r.call_ok == TOOL_ERROR).long(), call_traj, r.num_trajectories) == 0


def called_a_tool(r: Rollouts) -> Tensor:
    """At least one tool call."""
    return r.calls_per_trajectory > 0


BUILTIN: dict[str, Rubric] = {
    f.__name__: f for f in (final_answer_nonempty, no_tool_error_after_last_success, no_tool_errors, called_a_tool)
}


def resolve(name: str) -> Rubric:
    """A built-in check by name, or ``module:function``."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ValueError(f"unknown rubric {name!r}; built-in: {', '.join(BUILTIN)} (or module:function)")
    return import_callable(name, "rubric")


def verdicts(rollouts: Rollouts, rubrics: list[str] | None) -> Tensor:
    """``[N, K]`` verdicts: of the named checks, or the ``rubric`` column when ``rubrics`` is None."""
    if rubrics is None:
        if rollouts.rubric is None:
            raise ValueError("no rubrics given and the rollouts have no rubric column")
        return rollouts.rubric
    cols = []
    for name in rubrics:
        v = resolve(name)(rollouts)
        if v.shape != (rollouts.num_trajectories,):
            raise ValueError(
                f"rubric {name!r} returned shape {tuple(v.shape)}, expected ({rollouts.num_trajectories},)"
            )
        cols.append(v.bool())
    return torch.stack(cols, 1) if cols else torch.ones(rollouts.num_trajectories, 0, dtype=torch.bool)
