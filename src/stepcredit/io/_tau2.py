"""tau2-bench result files: ``{timestamp, info, tasks, simulations}``.

Each simulation is a trajectory: ``id`` → trajectory id, ``task_id`` → group, ``reward_info.reward``
→ outcome, ``messages`` in tau2's schema (close to OpenAI chat; read by the chat parser). Calls are
labelled from the file's own tasks' reference actions by ``labels.label_calls`` (audits only).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from stepcredit.errors import RolloutError
from stepcredit.io._chat import ChatFields, parse_record, read_json
from stepcredit.io._labels import label_calls
from stepcredit.rollouts import TrajectoryRecord

TAU2_FIELDS = ChatFields(id="id", group="task_id", reward="reward_info.reward", messages="messages")


def is_tau2(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("simulations"), list)


def reference_actions(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference actions of a tau2 task (``evaluation_criteria.actions``; none → empty)."""
    criteria = task.get("evaluation_criteria") or {}
    return list(criteria.get("actions") or [])


def parse_tau2(obj: Any, source: str, *, labels: bool = True, id_field: str = "id") -> list[TrajectoryRecord]:
    """Trajectories of one parsed tau2 results object; with ``labels`` every call is labelled.
    ``id_field``: where a simulation keeps its id (comma-separated fields are joined, e.g.
    ``"task_id,trial"``)."""
    fields = replace(TAU2_FIELDS, id=id_field)
    if not is_tau2(obj):
        raise RolloutError(
            "expected a tau2 results object with a 'simulations' list", source=source, field="simulations"
        )
    tasks = obj.get("tasks") or []
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
        raise RolloutError("expected a list of task objects with an 'id'", source=source, field="tasks")
    by_id = {str(t["id"]): t for t in tasks}
    records = []
    for i, sim in enumerate(obj["simulations"]):
        rec = parse_record(sim, f"{source}: simulations[{i}]", fields)
        if labels:
            task = by_id.get(rec.group)
            if task is None:
                raise RolloutError(
                    f"task {rec.group!r} is not among the file's tasks, so its calls cannot be labelled",
                    source=rec.source,
                    trajectory=rec.id,
                    group=rec.group,
                    field="task_id",
                )
            label_calls(rec, reference_actions(task))
        records.append(rec)
    return records


def read_tau2_records(path: Path, *, labels: bool = True) -> list[TrajectoryRecord]:
    return parse_tau2(read_json(path), str(path), labels=labels)
