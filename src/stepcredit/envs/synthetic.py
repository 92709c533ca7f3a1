"""A small synthetic tool-use task family with ground-truth step labels, for demos and tests.

Each task (group) needs a plan of ``plan_length`` write calls, in order, with specific arguments.
An agent of a given ``skill`` walks the plan: at each turn it may look something up (a read call,
label 0), make the next planned call correctly (+1), make a write with wrong arguments (−1; the task
is then lost), or make a call the tool rejects (error result, label 0). It stops after the plan, after
a wrong write, or at ``max_steps``, with a final text answer. Outcome 1 iff the whole plan was made and
no wrong write happened. Every random choice comes from one seeded ``numpy`` generator.
"""

from __future__ import annotations

import numpy as np

from stepcredit.core import (
    TOOL_ERROR,
    TOOL_OK,
    CallRecord,
    Rollouts,
    StepRecord,
    TrajectoryRecord,
    build,
    canonical_json,
)

WRITE_TOOLS = ("book", "cancel", "update", "refund")
READ_TOOLS = ("lookup_user", "search", "get_details")


def make_records(
    num_groups: int = 16,
    group_size: int = 8,
    *,
    plan_length: int = 3,
    max_steps: int = 10,
    skill: tuple[float, float] = (0.55, 0.95),
    p_read: float = 0.25,
    p_error: float = 0.1,
    seed: int = 0,
) -> list[TrajectoryRecord]:
    """Synthetic trajectories; each agent's skill is drawn uniformly from the ``skill`` range."""
    rng = np.random.default_rng(seed)
    records = []
    for g in range(num_groups):
        plan = [
            (str(rng.choice(WRITE_TOOLS)), {"id": int(rng.integers(1000)), "amount": int(rng.integers(1, 9))})
            for _ in range(plan_length)
        ]
        for k in range(group_size):
            p_ok = rng.uniform(*skill)
            steps: list[StepRecord] = []
            done, lost = 0, False
            while len(steps) < max_steps - 1 and done < plan_length and not lost:
                u = rng.random()
                if u < p_read:
                    tool = str(rng.choice(READ_TOOLS))
                    call = CallRecord(tool, canonical_json({"id": plan[done][1]["id"]}), "{...}", TOOL_OK, 0)
                elif u < p_read + p_error:
                    name, args = plan[done]
                    call = CallRecord(name, canonical_json({"id": args["id"]}), "Error: missing amount", TOOL_ERROR, 0)
                elif rng.random() < p_ok:
                    name, args = plan[done]
                    call = CallRecord(name, canonical_json(args), "ok", TOOL_OK, 1)
                    done += 1
                else:
                    name, args = plan[done]
                    wrong = dict(args, amount=int(args["amount"]) + int(rng.integers(1, 5)))
                    call = CallRecord(name, canonical_json(wrong), "ok", TOOL_OK, -1)
                    lost = True
                steps.append(StepRecord(action=f"Calling {call.name}.", calls=[call], label=call.label))
            success = done == plan_length and not lost
            steps.append(StepRecord(action="All done." if success else "I could not finish.", label=0))
            records.append(
                TrajectoryRecord(
                    id=f"task{g}-agent{k}",
                    group=f"task{g}",
                    outcome=float(success),
                    steps=steps,
                    prompt=f"Task {g}: make {plan_length} changes.",
                )
            )
    return records


def make_rollouts(num_groups: int = 16, group_size: int = 8, *, seed: int = 0, **kwargs: object) -> Rollouts:
    """``make_records`` packed into a ``Rollouts`` (history-derived states)."""
    return build(make_records(num_groups, group_size, seed=seed, **kwargs))  # type: ignore[arg-type]


def make_tree_records(
    num_tasks: int = 8,
    *,
    trees_per_task: int = 2,
    leaves_per_tree: int = 3,
    depth: int = 5,
    p_good: float = 0.8,
    seed: int = 0,
) -> list[TrajectoryRecord]:
    """Tree rollouts in the shape of Tree-GRPO's search: each tree starts as one chain of ``depth``
    steps; further leaves branch off an existing path at a random step (a new path shares that path's
    first ``b`` nodes, ``0 ≤ b < depth``). Every node (step) is a tool call that is good with
    probability ``p_good``; a leaf succeeds iff all nodes on its path are good. A step's ``state`` is
    its node id, so steps on a shared prefix share it; ``tree`` names the tree."""
    rng = np.random.default_rng(seed)
    records = []
    next_node = 0
    for task in range(num_tasks):
        for tree in range(trees_per_task):
            paths: list[list[int]] = []
            good: dict[int, bool] = {}
            while len(paths) < leaves_per_tree:
                if paths:
                    base = paths[int(rng.integers(len(paths)))]
                    branch = int(rng.integers(depth))
                    path = base[:branch]
                else:
                    path = []
                while len(path) < depth:
                    good[next_node] = bool(rng.random() < p_good)
                    path.append(next_node)
                    next_node += 1
                paths.append(path)
            for leaf, path in enumerate(paths):
                steps = [
                    StepRecord(
                        action=f"step {t}",
                        calls=[
                            CallRecord("act", canonical_json({"node": node}), "ok", TOOL_OK, 1 if good[node] else -1)
                        ],
                        state=node,
                    )
                    for t, node in enumerate(path)
                ]
                records.append(
                    TrajectoryRecord(
                        id=f"task{task}-tree{tree}-leaf{leaf}",
                        group=f"task{task}",
                        outcome=float(all(good[node] for node in path)),
                        steps=steps,
                        tree=str(tree),
                    )
                )
    return records


def make_tree_rollouts(num_tasks: int = 8, *, seed: int = 0, **kwargs: object) -> Rollouts:
    """``make_tree_records`` packed into a ``Rollouts``."""
    return build(make_tree_records(num_tasks, seed=seed, **kwargs))  # type: ignore[arg-type]
