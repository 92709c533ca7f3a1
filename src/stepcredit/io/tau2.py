"""tau2-bench result files: ``{timestamp, info, tasks, simulations}``.

Each simulation is a trajectory: ``id`` → trajectory id, ``task_id`` → group, ``reward_info.reward``
→ outcome, ``messages`` in tau2's schema (close to OpenAI chat; read by the chat parser). Calls are
labelled from the file's own tasks' reference actions by ``labels.label_calls`` (audits only).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from stepcredit.core import TrajectoryRecord
from stepcredit.core.errors import RolloutError
from stepcredit.io.chat import ChatFields, parse_record, read_json
from stepcredit.io.labels import check_actions, label_calls

TAU2_FIELDS = ChatFields(id="id", group="task_id", reward="reward_info.reward", messages="messages")


def is_tau2(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("simulations"), list)


def reference_actions(task: dict[str, Any], source: str = "tau2") -> list[dict[str, Any]]:
    """The reference actions of a tau2 task (``evaluation_criteria.actions``; none → empty), checked."""
    group = str(task.get("id"))
    criteria = task.get("evaluation_criteria")
    if criteria is None:
        return []
    if not isinstance(criteria, dict):
        raise RolloutError(
            f"expected an object, got {type(criteria).__name__}",
            source=source,
            group=group,
            field="evaluation_criteria",
        )
    actions = criteria.get("actions")
    return [] if actions is None else check_actions(actions, source, group, "evaluation_criteria.actions")


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
    if not isinstance(tasks, list) or not all(
        isinstance(t, dict) and isinstance(t.get("id"), str | int) for t in tasks
    ):
        raise RolloutError("expected a list of task objects with an 'id'", source=source, field="tasks")
    # every task's reference actions are checked, used or not
    references = {str(t["id"]): reference_actions(t, source) for t in tasks} if labels else {}
    records = []
    for i, sim in enumerate(obj["simulations"]):
        rec = parse_record(sim, f"{source}: simulations[{i}]", fields)
        if labels:
            actions = references.get(rec.group)
            if actions is None:
                raise RolloutError(
                    f"task {rec.group!r} is not among the file's tasks, so its calls cannot be labelled",
                    source=rec.source,
                    trajectory=rec.id,
                    group=rec.group,
                    field="task_id",
                )
            label_calls(rec, actions)
        records.append(rec)
    return records


def read_tau2_records(path: Path, *, labels: bool = True) -> list[TrajectoryRecord]:
    return parse_tau2(read_json(path), str(path), labels=labels)
