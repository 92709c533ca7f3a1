"""``Credit``: what every estimator returns — per-trajectory, per-step and per-tool-call components.

The credit of a token of step ``s`` (trajectory ``i``) is

    trajectory[i] + step[s]                    (+ call[c] when the token lies in tool call c's span)

and exactly 0 on tokens outside every step span (observations, padding). Keeping the components apart
lets an outcome-only estimator reach the trainer's ``(B, T)`` tensor as one broadcast (the memory
floor) while step-level estimators add what they know.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stepcredit.core import segments
from stepcredit.core.batch import Rollouts

__all__ = ["Credit"]


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _scale(a: Tensor | None, weight: float) -> Tensor | None:
    return None if a is None else a * weight


def _pick(a: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if a is None else a[rows]


def _placed(a: Tensor | None, rows: Tensor, size: int) -> Tensor | None:
    if a is None:
        return None
    out = a.new_zeros(size)
    out[rows] = a
    return out


@dataclass(frozen=True, eq=False)
class Credit:
    """Additive credit components for one ``Rollouts`` batch.

    Attributes:
        trajectory: ``[N]`` credit shared by every step of a trajectory (e.g. a GRPO advantage).
        step: ``[S]`` extra credit per step, or ``None``.
        call: ``[C]`` extra credit on the tokens of each tool call's span, or ``None``.
    """

    trajectory: Tensor
    step: Tensor | None = None
    call: Tensor | None = None

    @classmethod
    def zeros(cls, rollouts: Rollouts) -> Credit:
        return cls(torch.zeros(rollouts.num_trajectories, dtype=torch.float32, device=rollouts.device))

    def check(self, rollouts: Rollouts, name: str = "credit") -> Credit:
        """Raise ``ValueError`` unless the components fit ``rollouts`` and are finite."""
        for part, col, size in (
            ("trajectory", self.trajectory, rollouts.num_trajectories),
            ("step", self.step, rollouts.num_steps),
            ("call", self.call, rollouts.num_calls),
        ):
            if col is None:
                continue
            if col.shape != (size,):
                raise ValueError(f"{name}: {part} credit has shape {tuple(col.shape)}, expected ({size},)")
            if not bool(torch.isfinite(col).all()):
                raise ValueError(f"{name}: {part} credit is not finite")
        return self

    def __add__(self, other: Credit) -> Credit:
        return Credit(self.trajectory + other.trajectory, _add(self.step, other.step), _add(self.call, other.call))

    def scale(self, weight: float) -> Credit:
        return Credit(self.trajectory * weight, _scale(self.step, weight), _scale(self.call, weight))

    def select(self, rollouts: Rollouts, trajectories: Tensor) -> Credit:
        """The credit of ``rollouts.select(trajectories)``."""
        steps, calls = rollouts.expand(trajectories)
        return Credit(self.trajectory[trajectories], _pick(self.step, steps), _pick(self.call, calls))

    # ------------------------------------------------------------------------------------ views
    def per_step(self, rollouts: Rollouts) -> Tensor:
        """``[S]``: trajectory credit + step credit (tool-call components not included)."""
        out = self.trajectory[rollouts.step_traj]
        return out if self.step is None else out + self.step

    def per_call(self, rollouts: Rollouts) -> Tensor:
        """``[C]``: the credit on a tool call's tokens — its step's credit + its own component."""
        out = self.per_step(rollouts)[rollouts.call_step]
        return out if self.call is None else out + self.call

    def to_tokens(self, rollouts: Rollouts) -> Tensor:
        """``(N, T)`` float32 aligned with ``rollouts.response_mask``; masked tokens exactly 0.

        Trajectory credit alone is one broadcast under the mask (the memory floor); with step or call
        credit each token gets its step's (and tool call's) value through the step and call token
        spans in one pass over one ``(N, T)`` buffer (``segments.spans_to_tokens``)."""
        mask = rollouts.response_mask
        if mask is None:
            raise ValueError("to_tokens needs token columns (response_mask and step spans) in the rollouts")
        if self.step is None and self.call is None:  # one broadcast: the memory floor
            return segments.rows_under_mask(self.trajectory, mask)
        start, end = rollouts.step_token_start, rollouts.step_token_end
        assert start is not None and end is not None  # token columns come together
        shape = (mask.shape[0], mask.shape[1])
        per_step = self.per_step(rollouts)
        if self.call is None:
            return segments.spans_to_tokens(per_step, rollouts.step_traj, start, end, shape)
        if rollouts.call_token_start is None or rollouts.call_token_end is None:
            raise ValueError("call credit needs tool-call token spans (call_token_start/end)")
        # as (step value everywhere in the step) + (call value on the call's tokens, else 0)
        dtype = torch.promote_types(per_step.dtype, self.call.dtype)
        step_values = per_step.to(dtype) + torch.zeros((), dtype=dtype, device=per_step.device)
        call_values = per_step[rollouts.call_step].to(dtype) + self.call.to(dtype)
        inner = (call_values, rollouts.call_step, rollouts.call_token_start, rollouts.call_token_end)
        return segments.spans_to_tokens(step_values, rollouts.step_traj, start, end, shape, inner=inner)

    def embed(self, rollouts: Rollouts, kept: Tensor) -> Credit:
        """This credit, computed on ``rollouts.select(kept)``, as credit on all of ``rollouts``: the
        trajectories ``kept`` (indices into ``rollouts``, in this credit's order, each at most once)
        carry theirs; every other trajectory, its steps and calls get exactly 0. ``to_tokens`` of the
        result is the trainer's full ``(N, T)`` layout with the rows a selection dropped zeroed."""
        kept = torch.as_tensor(kept, dtype=torch.int64, device=rollouts.device).reshape(-1)
        if kept.numel() != self.trajectory.numel():
            raise ValueError(f"{kept.numel()} kept trajectories for credit of {self.trajectory.numel()}")
        steps, calls = rollouts.expand(kept)
        trajectory = self.trajectory.new_zeros(rollouts.num_trajectories)
        trajectory[kept] = self.trajectory
        return Credit(trajectory, _placed(self.step, steps, rollouts.num_steps),
                      _placed(self.call, calls, rollouts.num_calls))

    def summary(self, rollouts: Rollouts) -> dict[str, Tensor]:
        """Per-trajectory ``[N]`` summaries of step credit: mean, min, max, sum, and the share of steps
        with positive credit (0 for trajectories without steps)."""
        values = self.per_step(rollouts)
        n = rollouts.num_trajectories
        idx = rollouts.step_traj
        lo, hi = segments.segment_min_max(values, idx, n)
        empty = rollouts.steps_per_trajectory == 0
        zero = torch.zeros_like(lo)
        return {
            "trajectory": self.trajectory,
            "mean": segments.segment_mean(values, idx, n),
            "min": torch.where(empty, zero, lo),
            "max": torch.where(empty, zero, hi),
            "sum": segments.segment_sum(values, idx, n),
            "positive_share": segments.segment_mean((values > 0).float(), idx, n),
        }
