"""SRL's step-wise reward: similarity of each action to the aligned expert action."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stepcredit.core import Rollouts, canonical_json
from stepcredit.core.errors import RolloutError, show
from stepcredit.core.registry import register
from stepcredit.views import malformed_call_steps, step_action_texts


def render_expert_action(action: Any) -> str:
    """An expert action as ``step_action_texts`` renders a step: a string as is; a call
    ``{name, arguments}`` as ``name canonical_arguments``; a list of calls one per line."""
    if isinstance(action, str):
        return action
    if isinstance(action, Mapping) and "name" in action:
        return f"{action['name']} {canonical_json(action.get('arguments') or {})}"
    if isinstance(action, list):
        return "\n".join(render_expert_action(a) for a in action)
    raise ValueError(f"expected an expert action (string, {{name, arguments}} or a list of them), got {show(action)}")


def load_experts(experts: str | Mapping[str, list[Any]]) -> dict[str, list[str]]:
    """Expert trajectories per group: a mapping group name → list of actions, or a JSON file of it."""
    if isinstance(experts, str):
        path = Path(experts)
        from stepcredit.io.chat import read_json

        experts = read_json(path)
    if not isinstance(experts, Mapping):
        raise RolloutError("expected a mapping of group name to a list of expert actions", field="experts")
    out = {}
    for group, actions in experts.items():
        if not isinstance(actions, list):
            raise RolloutError(
                f"expected a list of expert actions, got {type(actions).__name__}", group=str(group), field="experts"
            )
        try:
            out[str(group)] = [render_expert_action(a) for a in actions]
        except ValueError as exc:
            raise RolloutError(str(exc), group=str(group), field="experts") from None
    return out


@register("shaping")
def expert_similarity(
    rollouts: Rollouts,
    *,
    experts: str | dict[str, list[Any]],
    format_penalty: bool = True,
) -> Rollouts:
    """SRL: the reward of step k is the similarity of its action to the expert's k-th action.

        r_k = SequenceMatcher(None, action_k, expert_k).ratio() = 2M / (|action_k| + |expert_k|)
        r_k = −1 when the action cannot be parsed (a tool call whose arguments are not valid JSON)

    Actions are compared as ``step_action_texts`` renders them (tool calls as ``name
    canonical_arguments``, else the step text — the monologue is not scored). ``experts`` maps each
    group name to its expert actions (or names a JSON file of that mapping); a step past the end of
    the expert trajectory gets 0. The result replaces the step rewards; compose it with ``step_grpo``
    (GRPO among the group's k-th steps) as SRL does. Deng et al. 2025, arXiv:2510.25992.
    """
    r = rollouts
    table = load_experts(experts)
    names = r.texts.group_names.to_pylist() if r.texts is not None else []
    missing = [g for g in names if g not in table]
    if missing:
        raise RolloutError(f"no expert trajectory for {len(missing)} group(s), e.g. {missing[0]!r}", field="experts")
    actions = step_action_texts(r)
    malformed = malformed_call_steps(r)
    off = r.step_offsets.tolist()
    group = r.group.tolist()
    rewards = []
    for i in range(r.num_trajectories):
        expert = table[names[group[i]]]
        for k, s in enumerate(range(off[i], off[i + 1])):
            if format_penalty and malformed[s]:
                rewards.append(-1.0)
            elif k < len(expert):
                rewards.append(difflib.SequenceMatcher(None, actions[s], expert[k]).ratio())
            else:
                rewards.append(0.0)
    return replace(r, reward=torch.tensor(rewards, dtype=torch.float32, device=r.device))
