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

from stepcredit import segments
from stepcredit.rollouts import Rollouts

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
        """``(N, T)`` float32 aligned with ``rollouts.response_mask``; masked tokens exactly 0."""
        mask = rollouts.response_mask
        if mask is None:
            raise ValueError("to_tokens needs token columns (response_mask and step spans) in the rollouts")
        zero = torch.zeros((), dtype=self.trajectory.dtype, device=mask.device)
        if self.step is None and self.call is None:  # one broadcast: the memory floor
            return torch.where(mask, self.trajectory[:, None], zero)
        out = segments.broadcast_to_tokens(self.per_step(rollouts), rollouts.token_step_index)
        if self.call is not None:
            if rollouts.call_token_start is None or rollouts.call_token_end is None:
                raise ValueError("call credit needs tool-call token spans (call_token_start/end)")
            call_map = segments.span_index_map(
                rollouts.call_token_start,
                rollouts.call_token_end,
                rollouts.call_traj,
                (mask.shape[0], mask.shape[1]),
            )
            out = out + segments.broadcast_to_tokens(self.call, call_map)
        return out

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
