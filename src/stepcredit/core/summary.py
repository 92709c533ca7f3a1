"""Summary statistics of a batch, as ``stepcredit inspect`` prints them."""

from __future__ import annotations

from typing import Any

import torch

from stepcredit.core import segments
from stepcredit.core.batch import TOOL_ERROR, TOOL_UNKNOWN, Rollouts

LABEL_NAMES = {1: "+1", 0: "0", -1: "-1"}


def _dist(x: torch.Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    xf = x.double()
    return {"mean": float(xf.mean()), "median": float(xf.median()), "max": float(xf.max())}


def summarize(rollouts: Rollouts, *, success_threshold: float = 1.0) -> dict[str, Any]:
    """Counts and rates of a batch; a trajectory succeeded when ``outcome >= success_threshold``."""
    r = rollouts
    success = r.outcome >= success_threshold
    g = r.num_groups
    wins, size = segments.group_wins(success, r.group, g)
    known = r.call_ok != TOOL_UNKNOWN
    errors = int((r.call_ok == TOOL_ERROR).sum())
    out: dict[str, Any] = {
        "trajectories": r.num_trajectories,
        "groups": g,
        "successes": int(success.sum()),
        "success_rate": float(success.double().mean()) if r.num_trajectories else 0.0,
        "groups_mixed": int(((wins > 0) & (wins < size)).sum()),
        "groups_all_fail": int((wins == 0).sum()),
        "groups_all_success": int((wins == size).sum()),
        "group_size": _dist(size),
        "steps": r.num_steps,
        "tool_calls": r.num_calls,
        "steps_per_trajectory": _dist(r.steps_per_trajectory),
        "tool_calls_per_trajectory": _dist(r.calls_per_trajectory),
        "tool_errors": errors,
        "tool_error_rate": errors / int(known.sum()) if bool(known.any()) else None,
        "success_threshold": success_threshold,
    }
    if r.call_label is not None:
        out["call_labels"] = _label_counts(r.call_label, success[r.call_traj])
    if r.label is not None:
        out["step_labels"] = _label_counts(r.label, success[r.step_traj])
    return out


def _label_counts(label: torch.Tensor, success: torch.Tensor) -> dict[str, dict[str, int]]:
    table = {}
    for name, mask in (("success", success), ("failure", ~success)):
        table[name] = {LABEL_NAMES[v]: int(((label == v) & mask).sum()) for v in (1, 0, -1)}
    return table
