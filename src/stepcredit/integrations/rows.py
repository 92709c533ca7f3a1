"""A trainer's rows mapped onto trajectories, and credit mapped back onto the rows' tokens.

Trainers hold token rows, and a row is not always a trajectory: verl's agent loop may emit several
rows for one session (keyed ``{uid}_{session}_{index}``), verl-agent emits one row per *step*. Credit
is a property of trajectories (baselines count each trajectory once), so the rows are first read as
pseudo-trajectories (``from_trainer_tensors``: each run of model tokens is a step, each tool-call span
a call), then the steps of the rows of one trajectory are concatenated in row order into a
trajectory-level ``Rollouts``. A recipe runs on that; its per-step and per-call credit go back to the
rows' token spans. Rows a selection drops get exactly 0 (a trainer such as verl expects every row back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from stepcredit.core import Rollouts, StepKind, segments
from stepcredit.core.credit import Credit
from stepcredit.core.errors import RolloutError
from stepcredit.io.tensors import dense_groups
from stepcredit.recipe import Recipe, RecipeResult

__all__ = ["RowCredit", "TrainerRows", "credit_metrics"]


@dataclass(frozen=True)
class RowCredit:
    """What running a recipe on a ``TrainerRows`` gives: ``advantages (N, T)`` float32 aligned with the
    rows' ``response_mask`` (0 on every other token and on every row a selection dropped), ``kept [N]``
    bool (the rows whose trajectory the recipe kept), the recipe's result on trajectories, and metrics."""

    advantages: Tensor
    kept: Tensor
    result: RecipeResult
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainerRows:
    """Rows ``(N, T)`` as trajectories.

    ``rows`` is the row-level batch (token columns; one pseudo-trajectory per row), ``rollouts`` the
    trajectory-level one; ``step_of [S]`` / ``call_of [C]`` give, for each trajectory-level step / call,
    its row-level index, and ``row_traj [N]`` each row's trajectory. When every row is its own
    trajectory, ``rollouts is rows`` and the maps are ``None``.
    """

    rows: Rollouts
    rollouts: Rollouts
    row_traj: Tensor
    step_of: Tensor | None = None
    call_of: Tensor | None = None
    notes: dict[str, float] = field(default_factory=dict)  # adapter counts, logged with the metrics

    @classmethod
    def from_rows(
        cls,
        rows: Rollouts,
        trajectory: Sequence[object] | np.ndarray | Tensor | None = None,
        order: Sequence[int] | np.ndarray | Tensor | None = None,
    ) -> TrainerRows:
        """Group ``rows`` (built by ``from_trainer_tensors``) into trajectories.

        Args:
            trajectory: ``[N]`` trajectory key of each row (any hashable, e.g. verl-agent's
                ``traj_uid``); ``None``: each row is a trajectory.
            order: ``[N]`` position of each row within its trajectory (e.g. verl's session output
                index, verl-agent's step index); rows are concatenated in increasing order (ties keep
                row order). ``None``: row order.

        A trajectory's outcome is that of its last row (verl copies the session's final score to its
        other rows; verl-agent copies the episode reward to every step row), its group that of its
        rows — rows of one trajectory in different groups are an error.
        """
        n = rows.num_trajectories
        if trajectory is None:
            return cls(rows, rows, torch.arange(n, device=rows.device))
        traj, names = dense_groups(trajectory)
        if traj.numel() != n:
            raise RolloutError(f"expected {n} trajectory keys (one per row), got {traj.numel()}", field="trajectory")
        traj = traj.to(rows.device)
        if order is None:
            pos = torch.arange(n, device=rows.device)
        else:
            pos = torch.as_tensor(np.asarray(order), device=rows.device).reshape(-1)
            if pos.numel() != n or pos.is_floating_point() or pos.dtype == torch.bool:
                raise RolloutError(
                    f"expected {n} integer positions (one per row), got {pos.numel()} of {pos.dtype}", field="order"
                )
        k = len(names)
        # rows sorted by (trajectory, position, row)
        row_perm = torch.from_numpy(np.lexsort((np.arange(n), pos.cpu().numpy(), traj.cpu().numpy()))).to(rows.device)
        sorted_traj = traj[row_perm]
        last_row = row_perm[segments.segment_last(sorted_traj, k)]
        group = rows.group[last_row]
        mixed = torch.nonzero(rows.group != group[traj])
        if mixed.numel():
            r = int(mixed[0, 0])
            raise RolloutError(
                f"rows of one trajectory must share a group: row {r} is in group "
                f"{rows.texts.group_names[int(rows.group[r])].as_py()!r}, the trajectory's last row in "
                f"{rows.texts.group_names[int(group[traj[r]])].as_py()!r}",
                trajectory=names[int(traj[r])],
                field="index",
            )
        step_of, call_of = rows.expand(row_perm)
        steps = segments.segment_sum(rows.steps_per_trajectory, traj, k)
        step_offsets = torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])
        kind = rows.kind[step_of]
        # a row's last reasoning step is its answer; only the trajectory's last step is
        is_last = torch.zeros_like(kind, dtype=torch.bool)
        is_last[step_offsets[1:][steps > 0] - 1] = True
        answer, reason = int(StepKind.ANSWER), int(StepKind.REASON)
        kind = torch.where((kind == answer) & ~is_last, torch.full_like(kind, reason), kind)
        calls_per_step = rows.calls_per_step[step_of]
        out: dict[str, object] = {}
        for name, col in Rollouts.columns().items():
            value = getattr(rows, name)
            if value is None or col.level == "token" or name.endswith("token_start") or name.endswith("token_end"):
                continue
            if col.level == "step" and col.offsets is None:
                out[name] = value[step_of]
            elif col.level == "call":
                out[name] = value[call_of]
            elif col.level == "trajectory" and col.offsets is None:
                out[name] = value[last_row]
        out.update(
            group=group,
            step_offsets=step_offsets,
            call_offsets=torch.cat([calls_per_step.new_zeros(1), torch.cumsum(calls_per_step, 0)]),
            kind=kind,
        )
        texts = rows.texts.take(
            {"trajectory": last_row, "group": torch.arange(rows.num_groups, device=rows.device), "step": step_of,
             "call": call_of}
        )
        texts = replace(texts, ids=pa.array(names, type=pa.large_string()))
        rollouts = Rollouts(**out, texts=texts)  # type: ignore[arg-type]
        return cls(rows, rollouts, traj, step_of, call_of)

    def token_advantages(self, credit: Credit, kept: Tensor | None = None, rollouts: Rollouts | None = None) -> Tensor:
        """``(N, T)`` row-token advantages from ``credit`` on ``rollouts`` (default ``self.rollouts``),
        which holds the trajectories ``kept`` (indices into ``self.rollouts``, default all) in order;
        every other row and every token outside a step is exactly 0."""
        rows = self.rows
        mask = rows.response_mask
        if mask is None:
            raise RolloutError("the rows carry no token columns (response_mask)", field="response_mask")
        on = self.rollouts if rollouts is None else rollouts
        if self.step_of is None:  # rows are trajectories: the recipe's own broadcast
            if kept is None:
                return credit.to_tokens(on)
            return credit.embed(rows, kept).to_tokens(rows)  # on all rows: the dropped ones get 0
        assert self.call_of is not None
        if credit.step is None and credit.call is None:  # one value per trajectory: the broadcast floor
            value = torch.zeros(self.rollouts.num_trajectories, dtype=credit.trajectory.dtype, device=mask.device)
            value[slice(None) if kept is None else kept] = credit.trajectory
            zero = torch.zeros((), dtype=value.dtype, device=mask.device)
            return torch.where(mask, value[self.row_traj][:, None], zero)
        steps, calls = (None, None) if kept is None else self.rollouts.expand(kept)
        step_of = self.step_of if steps is None else self.step_of[steps]
        per_step = credit.per_step(on)
        row_step = torch.zeros(rows.num_steps, dtype=per_step.dtype, device=mask.device)
        row_step[step_of] = per_step
        out = segments.broadcast_to_tokens(row_step, rows.token_step_index)
        if credit.call is not None and rows.num_calls:
            if rows.call_token_start is None or rows.call_token_end is None:
                raise ValueError("call credit needs tool-call token spans (call_token_start/end)")
            call_of = self.call_of if calls is None else self.call_of[calls]
            row_call = torch.zeros(rows.num_calls, dtype=per_step.dtype, device=mask.device)
            row_call[call_of] = credit.call
            shape = (mask.shape[0], mask.shape[1])
            call_map = segments.span_index_map(rows.call_token_start, rows.call_token_end, rows.call_traj, shape)
            out = out + segments.broadcast_to_tokens(row_call, call_map)
        return out

    def run(self, recipe: Recipe | str | Path | Mapping[str, Any]) -> RowCredit:
        """Run ``recipe`` (a ``Recipe`` or anything ``Recipe.load`` takes) on the trajectories and map
        its credit back to the rows' tokens."""
        recipe = Recipe.load(recipe)
        result = recipe.run(self.rollouts)
        n = self.rollouts.num_trajectories
        full = result.kept.numel() == n and bool((result.kept == torch.arange(n, device=result.kept.device)).all())
        kept = None if full else result.kept
        advantages = self.token_advantages(result.credit, kept, result.rollouts)
        kept_traj = torch.zeros(n, dtype=torch.bool, device=self.row_traj.device)
        kept_traj[result.kept] = True
        kept_rows = kept_traj[self.row_traj]
        return RowCredit(advantages, kept_rows, result, {**credit_metrics(self, result, advantages), **self.notes})


def credit_metrics(batch: TrainerRows, result: RecipeResult, advantages: Tensor) -> dict[str, float]:
    """Scalars a trainer logs next to its own (under ``stepcredit/``): how many trajectories and steps
    the recipe credited, the token advantage's mean and mean magnitude, how much step credit varies
    inside a trajectory (0 for any outcome-only estimator), and — the number stepcredit exists for —
    the share of steps of *failed* trajectories (outcome below the group's mean) that get positive
    credit; and how many tool calls a trajectory holds (0 means a call-level recipe found none: check
    the tool-call markers)."""
    mask = batch.rows.response_mask
    assert mask is not None
    r, credit = result.rollouts, result.credit
    per_step = credit.per_step(r).double()
    n_steps = max(r.num_steps, 1)
    lo, hi = segments.segment_min_max(per_step, r.step_traj, r.num_trajectories)
    has = r.steps_per_trajectory > 0
    _, mean, _, _ = segments.group_stats(r.outcome.double(), r.group, r.num_groups)
    failed = (r.outcome.double() < mean[r.group])[r.step_traj]  # below its group's mean
    num_tokens = max(int(mask.sum()), 1)  # advantages are 0 off the mask: sums, not a masked copy
    return {
        "stepcredit/trajectories": float(batch.rollouts.num_trajectories),
        "stepcredit/kept_fraction": result.kept.numel() / max(batch.rollouts.num_trajectories, 1),
        "stepcredit/steps_per_trajectory": r.num_steps / max(r.num_trajectories, 1),
        "stepcredit/calls_per_trajectory": r.num_calls / max(r.num_trajectories, 1),
        "stepcredit/adv_mean": float(advantages.sum(dtype=torch.float64)) / num_tokens,
        "stepcredit/adv_abs_mean": float(advantages.abs().sum(dtype=torch.float64)) / num_tokens,
        "stepcredit/step_spread": float((hi - lo)[has].mean()) if bool(has.any()) else 0.0,
        "stepcredit/positive_steps": float((per_step > 0).sum()) / n_steps,
        "stepcredit/failed_positive_steps": float(((per_step > 0) & failed).sum()) / max(int(failed.sum()), 1),
    }
