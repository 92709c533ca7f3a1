"""Critique-GRPO's generation side: critiques of attempts, refinements by the policy, one per group.

Zhang et al. 2025, "Critique-GRPO: Advancing LLM Reasoning with Natural Language and Numerical
Feedback", arXiv:2506.03106 (released code: ``critique_vllm_rollout_spmd.py``):

1. sample ``G`` attempts per task (on-policy chains);
2. critique attempts — ``refine="failed"`` (the default: critiques of failed rollouts) or ``"all"`` (the
   released code critiques every response) — with a *critic* ``Attempt -> str``;
3. the **current policy** generates a refinement of each critiqued attempt: a new episode of the same
   task (the environment restored to the task's start) whose context is the task, the attempt (its
   actions and observations, as the policy saw them) and the critique as a user turn;
4. per task, **one** refinement is selected: the first that solves the task, else the one with the best
   outcome (the first among equals) — the released ``process_refinement_groups``;
5. it replaces the group's first slot (the released code's ``n_prefix = 1``: slot 0 of every group,
   whatever its outcome; slots are i.i.d. samples, so this drops a uniformly random on-policy sample),
   **attached to the original prompt**: its token ids follow the task prompt alone — the attempt and
   the critique are not in the training context. ``TrainingBatch.off_policy`` marks it.

The credit is then ``A = R − mean_g R`` over the mixed group (recipe ``dr_grpo``) and the refinement's
tokens are trained with policy shaping (``train.losses.on_off_policy_loss``). Groups with nothing to
refine (``refine="failed"`` and no failure) stay all on-policy.

**Critics.** ``env_critic`` (the default) is rule-based from the environment's feedback, in the spirit of
the paper's ``simple_gt`` critique: whether the answer was right, the first tool error and what it
said, a run that ended without answering, and the verifier's reference answer where the family has one
(``ToolEnv.reference_answer``: the same ground truth the outcome reward is computed from, never step
labels). Any ``Callable[[Attempt], str]`` — an LLM asked to critique — replaces it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from stepcredit.core.registry import Positive
from stepcredit.envs.actions import parse_action
from stepcredit.feedback.base import Feedback
from stepcredit.generation.chat_format import ChatFormat
from stepcredit.generation.engine import Engine, EnvFactory, Progress, Root, TrainingBatch
from stepcredit.generation.policy import Context, Policy

__all__ = ["Attempt", "Critic", "Critique", "CritiqueOptions", "env_critic", "rollout_critique_chains"]

Refine = Literal["failed", "all"]


@dataclass(frozen=True)
class Attempt:
    """One finished attempt, as a critic sees it."""

    task: str
    prompt: str
    actions: tuple[str, ...]
    observations: tuple[str, ...]
    outcome: float
    reference: str | None  # the verifier's answer; None where the family has no single answer

    @property
    def solved(self) -> bool:
        return self.outcome >= 1.0


Critic = Callable[[Attempt], str]


def env_critic(attempt: Attempt) -> str:
    """A rule-based critique from the environment's feedback (the paper's ``simple_gt`` kind, for
    tool use): right or wrong, the first tool error, no answer given, and the reference answer."""
    if attempt.solved:
        return "Your answer is correct."
    parts = []
    for k, (action, obs) in enumerate(zip(attempt.actions, attempt.observations, strict=True)):
        if obs.startswith("Error"):
            parts.append(f"Step {k + 1} ({action.strip()[:120]}) failed: {obs.strip()[:160]}")
            break
    answered = bool(attempt.actions) and parse_action(attempt.actions[-1]).answer is not None
    parts.append("Your final answer is incorrect." if answered else "The run ended without an answer.")
    if attempt.reference is not None:
        parts.append(f"The correct answer is {attempt.reference}.")
    return " ".join(parts) + " Solve the task again."


def _attempt(engine: Engine, root: Root, path: list[int]) -> Attempt:
    steps = [engine.nodes[n].step for n in path]
    return Attempt(root.context.task, root.context.messages[0]["content"], tuple(s.action for s in steps),
                   tuple(s.observation for s in steps), engine.nodes[path[-1]].outcome, root.reference)


def _refinement_context(engine: Engine, root: Root, path: list[int], critique: str) -> Context:
    """The task, the attempt as the policy saw it, its last observation, then the critique as a user turn."""
    last = engine.nodes[path[-1]]
    messages = [*last.context.messages, {"role": "user", "content": critique}]
    token_ids = None
    if engine.format is not None:
        assert last.context.token_ids is not None
        closing = engine.format.encode_observation(last.step.observation)[:-1]  # the final result, no new turn
        token_ids = [*last.context.token_ids, *closing, *engine.format.encode_feedback(critique)]
    return Context(task=root.context.task, messages=messages, info=root.context.info, token_ids=token_ids,
                   step=0, key=root.context.key)


def rollout_critique_chains(
    make_env: EnvFactory,
    policy: Policy,
    tasks: Sequence[int],
    *,
    group_size: int = 8,
    critic: Critic = env_critic,
    refine: Refine = "failed",
    refiner: Policy | None = None,
    attach: Literal["task", "critique"] = "task",
    chat_format: ChatFormat | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> TrainingBatch:
    """``group_size`` chains per task, then Critique-GRPO's refinement (see the module docstring): per
    group, the selected refinement replaces slot 0, attached to the task prompt, ``off_policy`` True.

    ``stats``: ``refinements`` (generated), ``refinement_success`` (their solve rate),
    ``refined_groups`` (groups given a refinement), ``solved_refinements`` (groups whose selected
    refinement solves the task).

    ``refiner``: the policy that writes refinements (default ``policy``, the paper's current policy).
    ``attach="critique"`` keeps each selected refinement's own context (task, attempt, critique) as its
    prompt instead of the task prompt: demonstrations of *using* a critique, for a warm start
    (``TrainConfig.sft_feedback``), not Critique-GRPO's training sample."""
    if group_size < 2:
        raise ValueError(f"Critique-GRPO needs group_size >= 2 (G - 1 on-policy + 1 refinement), got {group_size!r}")
    if refine not in ("failed", "all"):
        raise ValueError(f"refine must be 'failed' or 'all', got {refine!r}")
    if attach not in ("task", "critique"):
        raise ValueError(f"attach must be 'task' or 'critique', got {attach!r}")
    engine = Engine(make_env, policy, chat_format, seed, batch_size, progress)
    roots = [engine.root(int(task), f"c{k}") for task in tasks for k in range(group_size)]
    threads = [engine.thread_from(root, None) for root in roots]
    engine.play(threads)
    paths = [t.path for t in threads]
    # critiques and refinements of the attempts to refine, all played in one batch
    targets = [i for i, p in enumerate(paths) if refine == "all" or engine.nodes[p[-1]].outcome < 1.0]
    refinements = []
    starts: list[list[int] | None] = []  # each refinement's context (task, attempt, critique) as ids
    for i in targets:
        critique = critic(_attempt(engine, roots[i], paths[i]))
        if not isinstance(critique, str):
            raise TypeError(f"the critic must return a string, got {type(critique).__name__} "
                            f"for {roots[i].context.task}")
        thread = engine.thread_from(roots[i], None)
        thread.context = _refinement_context(engine, roots[i], paths[i], critique)
        starts.append(thread.context.token_ids)
        refinements.append(thread)
    if refiner is not None:
        engine.policy = refiner
    engine.play(refinements)
    engine.policy = policy
    off_policy = torch.zeros(len(roots), dtype=torch.bool)
    by_group: dict[int, list[tuple[list[int], list[int] | None]]] = {}
    for i, thread, start in zip(targets, refinements, starts, strict=True):
        by_group.setdefault(i // group_size, []).append((thread.path, start))
    prompts: dict[int, list[int] | None] = {}
    solved = 0
    for g, candidates in by_group.items():
        outcomes = [engine.nodes[p[-1]].outcome for p, _ in candidates]
        first_best = max(range(len(outcomes)), key=outcomes.__getitem__)  # max() keeps the first of equals
        best = next((k for k, o in enumerate(outcomes) if o >= 1.0), first_best)
        solved += outcomes[best] >= 1.0
        paths[g * group_size] = candidates[best][0]
        off_policy[g * group_size] = True
        if attach == "critique":
            prompts[g * group_size] = candidates[best][1]
    batch = engine.batch([(root, path) for root, path in zip(roots, paths, strict=True)], trees=False)
    batch.off_policy = off_policy
    if batch.prompt_ids is not None:
        for i, ids in prompts.items():
            assert ids is not None
            batch.prompt_ids[i] = ids
    ref_outcomes = [engine.nodes[t.path[-1]].outcome for t in refinements]
    batch.stats = {
        "refinements": float(len(refinements)),
        "refinement_success": (float(sum(o >= 1.0 for o in ref_outcomes) / len(ref_outcomes)) if ref_outcomes
                               else math.nan),
        "refined_groups": float(len(by_group)),
        "solved_refinements": float(solved),
    }
    return batch


# ------------------------------------------------------------------------------ in the RL loop
@dataclass(frozen=True)
class CritiqueOptions:
    """Critique-GRPO's options (``TrainConfig.critique``).

    ``critic``: "env" (``env_critic``, rule-based from the environment's feedback) or, from Python, any
    ``Attempt -> str``; ``refine``: critique the failed attempts ("failed") or all; ``gamma``: policy
    shaping ``f(p) = p / (p + gamma)`` on the refinement's tokens; ``clip``: PPO's clip on them too."""

    critic: Literal["env"] | Callable[[Attempt], str] = "env"
    refine: Refine = "failed"
    gamma: Positive = 0.1
    clip: bool = False


class Critique(Feedback):
    """Critique-GRPO in the loop: the step's rollouts are ``rollout_critique_chains`` (refinements in the
    group, ``off_policy``), trained with policy shaping (``train.losses.on_off_policy_loss``)."""

    name = "critique"

    def __init__(self, options: CritiqueOptions) -> None:
        self.options = options

    def generate(self, policy: Any, make: EnvFactory, tasks: Sequence[int], *, group_size: int,
                 seed: int) -> TrainingBatch | None:
        critic = env_critic if self.options.critic == "env" else self.options.critic
        return rollout_critique_chains(make, policy, tasks, group_size=group_size, critic=critic,
                                       refine=self.options.refine, chat_format=policy.format, seed=seed)

    def off_policy_shaping(self) -> tuple[float, bool] | None:
        return self.options.gamma, self.options.clip
