"""Credit next to the step texts: one JSON line per trajectory, and the reader that loads it back.

    {"id", "group", "outcome", "recipe", "credit": {trajectory, mean, min, max, sum, positive_share},
     "steps": [{"index", "kind", "action", "observation", "reward", "tool_ok", "credit",
                "calls": [{"name", "arguments", "result", "ok", "credit"}]}]}

``credit`` of a step is its per-step credit (``Credit.per_step``); of a call, the credit on the call's
tokens (``Credit.per_call``). Values are float32 written exactly (JSON floats round-trip float32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stepcredit.core import Rollouts, StepKind
from stepcredit.core.credit import Credit
from stepcredit.core.errors import RolloutError
from stepcredit.io.atomic import atomic_write
from stepcredit.io.chat import iter_json_records


def credit_records(rollouts: Rollouts, credit: Credit, recipe: str = "") -> list[dict[str, Any]]:
    r = rollouts
    assert r.texts is not None
    t = r.texts
    step_credit = credit.per_step(r).tolist()
    call_credit = credit.per_call(r).tolist()
    summary = {k: v.tolist() for k, v in credit.summary(r).items()}
    off, coff = r.step_offsets.tolist(), r.call_offsets.tolist()
    kind, reward, tool_ok, call_ok = r.kind.tolist(), r.reward.tolist(), r.tool_ok.tolist(), r.call_ok.tolist()
    action, observation = t.action.to_pylist(), t.observation.to_pylist()
    names, args, results = t.call_name.to_pylist(), t.call_arguments.to_pylist(), t.call_result.to_pylist()
    ids, groups, outcome = t.ids.to_pylist(), t.group_names.to_pylist(), r.outcome.tolist()
    group = r.group.tolist()
    records = []
    for i in range(r.num_trajectories):
        steps = []
        for s in range(off[i], off[i + 1]):
            calls = [
                {
                    "name": names[c],
                    "arguments": args[c],
                    "result": results[c],
                    "ok": call_ok[c],
                    "credit": call_credit[c],
                }
                for c in range(coff[s], coff[s + 1])
            ]
            steps.append(
                {
                    "index": s - off[i],
                    "kind": StepKind(kind[s]).name.lower(),
                    "action": action[s],
                    "observation": observation[s],
                    "reward": reward[s],
                    "tool_ok": tool_ok[s],
                    "credit": step_credit[s],
                    "calls": calls,
                }
            )
        records.append(
            {
                "id": ids[i],
                "group": groups[group[i]],
                "outcome": outcome[i],
                "recipe": recipe,
                "credit": {k: v[i] for k, v in summary.items()},
                "steps": steps,
            }
        )
    return records


def write_credit_jsonl(rollouts: Rollouts, credit: Credit, path: str | Path, recipe: str = "") -> None:
    with atomic_write(path) as f:
        for rec in credit_records(rollouts, credit, recipe):
            f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")


def read_credit_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a credit file (``RolloutError`` on a line that is not a credit record)."""
    out = []
    for rec, source in iter_json_records(Path(path)):
        if not isinstance(rec, dict) or not isinstance(rec.get("steps"), list) or "credit" not in rec:
            raise RolloutError("not a credit record (needs 'credit' and 'steps')", source=source)
        out.append(rec)
    return out
