"""Evaluative and directive feedback per turn: OpenClaw-RL's judge and hinted teacher contexts.

Wang et al. 2026, "OpenClaw-RL: Train Any Agent Simply by Talking", arXiv:2603.10165 (released code:
``openclaw-opd/openclaw_opd_api_server.py``, ``openclaw-combine/combine_loss.py``). The state that
follows an action (a tool result, an error, the verifier's verdict) says two things:

* **evaluative** — how good the action was: a judge's score ``r_t ∈ {+1, −1, 0}``;
* **directive** — how it should have differed: a hint. The *teacher* is the same model with the hint
  appended to the turn's context, ``s_t ⊕ hint``; its log-probabilities of the *original* action tokens
  against the sampling policy's give a token-level advantage ``log π_teacher − log π_old`` (on-policy
  distillation, OPD; ``train.losses.opd_advantages``).

``judge_steps`` runs ``votes`` judge calls per step (OpenClaw's ``PRM_M``): the score is the sign of the
votes' sum (their majority; 0 on a tie) and the hint is the longest one of more than 10 characters
(``_select_best_hint``); a step without such a hint gives no OPD sample. Scores go to the ``prm`` step
column, so a recipe can use them (``prm_mix``); hints go to ``hinted_contexts``, which builds each
teacher context by *concatenating token ids* — the turn's context exactly as the policy saw it, minus
its trailing assistant marker, then ``<|user|>{hint}<|end|><|assistant|>`` — so the teacher scores
exactly the student's tokens (the alignment OpenClaw warns about).

**Judges.** ``env_judge`` (the default) is rule-based from the environment's feedback: a malformed action
or a tool error is −1 with a hint naming the action and its error ("Avoid …: it fails (…)." — hindsight
phrased for the context *before* the action, where the teacher reads it); a wrong final answer is −1 with the verifier's
reference answer as the hint (where the family has one; ``ToolEnv.reference_answer``); a right answer is
+1; a call that ran is 0 (its result alone does not say whether it was the right call). It reads no step
labels. Any ``Callable[[Turn], Verdict]`` — an LLM judge — replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from stepcredit.envs.actions import parse_action
from stepcredit.rollout.chat_format import ChatFormat
from stepcredit.rollout.engine import RolloutBatch

__all__ = [
    "MIN_HINT_CHARS", "Judge", "Turn", "Verdict", "answer_hint", "env_judge", "hinted_context", "hinted_contexts",
    "judge_steps",
]

MIN_HINT_CHARS = 10  # OpenClaw keeps hints longer than 10 characters


@dataclass(frozen=True)
class Turn:
    """One step as a judge sees it: the action and the state that followed it."""

    task: str
    prompt: str
    step: int  # 0-based index of the step in its trajectory
    action: str
    next_state: str  # the observation after the action
    terminal: bool
    outcome: float  # the episode's reward when ``terminal``, else 0
    reference: str | None  # the verifier's answer; None where the family has no single answer


@dataclass(frozen=True)
class Verdict:
    """A judge's vote: ``score`` in {+1, −1, 0} and an optional directive hint."""

    score: int
    hint: str | None = None


Judge = Callable[[Turn], Verdict]


def answer_hint(reference: str) -> str:
    """``env_judge``'s hint after a wrong final answer."""
    return f"The correct answer is {reference}."


def hinted_context(context_ids: list[int], hint: str, chat_format: ChatFormat) -> list[int]:
    """``s_t ⊕ hint`` as ids: the turn's context without its trailing assistant marker, then the hint as
    a user turn and the assistant marker again — the student's ids untouched, so the teacher scores them."""
    return [*context_ids[:-1], *chat_format.encode_feedback(hint)]


def env_judge(turn: Turn) -> Verdict:
    """A rule-based judge from the environment's feedback (see the module docstring)."""
    state = turn.next_state.strip()
    if state.startswith("Error"):
        return Verdict(-1, f"Avoid {turn.action.strip()[:120]}: it fails ({state[:160]}).")
    if turn.terminal and parse_action(turn.action).answer is not None:
        if turn.outcome >= 1.0:
            return Verdict(1)
        hint = answer_hint(turn.reference) if turn.reference is not None else None
        return Verdict(-1, hint)
    return Verdict(0)


def judge_steps(batch: RolloutBatch, judge: Judge = env_judge, *, votes: int = 1) -> tuple[Tensor, list[str | None]]:
    """Per step of ``batch.rollouts`` (flat step order): the judge's score ``[S]`` (float32, majority of
    ``votes`` votes) and its hint (None where no vote gave one longer than ``MIN_HINT_CHARS``)."""
    if votes < 1:
        raise ValueError(f"votes must be positive, got {votes!r}")
    r = batch.rollouts
    assert r.texts is not None
    prompts = r.texts.prompt.to_pylist() if r.texts.prompt is not None else [""] * r.num_trajectories
    scores: list[float] = []
    hints: list[str | None] = []
    for i, path in enumerate(batch.paths):
        reference = batch.references[i] if batch.references is not None else None
        for k, node_id in enumerate(path):
            node = batch.nodes[node_id]
            turn = Turn(str(node.context.task), prompts[i], k, node.step.action, node.step.observation, node.terminal,
                        node.outcome, reference)
            verdicts = [judge(turn) for _ in range(votes)]
            for v in verdicts:
                if not isinstance(v, Verdict) or v.score not in (-1, 0, 1):
                    raise ValueError(f"the judge must return Verdict(score in {{-1, 0, 1}}, hint), got {v!r} "
                                     f"for step {k} of trajectory {i} ({turn.task})")
            total = sum(v.score for v in verdicts)
            scores.append(float((total > 0) - (total < 0)))
            kept = [v.hint for v in verdicts if v.hint is not None and len(v.hint.strip()) > MIN_HINT_CHARS]
            hints.append(max(kept, key=len) if kept else None)
    if len(scores) != r.num_steps:
        raise ValueError(f"the batch's paths hold {len(scores)} steps, its rollouts {r.num_steps}")
    return torch.tensor(scores, dtype=torch.float32), hints


def with_judge_scores(batch: RolloutBatch, scores: Tensor) -> RolloutBatch:
    """The batch with the judge's scores as the rollouts' ``prm`` step column."""
    return replace(batch, rollouts=replace(batch.rollouts, prm=scores))


@dataclass(frozen=True)
class TeacherInputs:
    """The hinted steps: trajectory, token span in the response, teacher context ids, the action's ids."""

    trajectory: Tensor  # (H,) int64
    start: Tensor  # (H,) first response token of the step
    contexts: list[list[int]]  # s_t ⊕ hint, as ids
    actions: list[list[int]]  # the step's generated ids (the student's tokens)


def hinted_contexts(batch: RolloutBatch, hints: list[str | None], chat_format: ChatFormat) -> TeacherInputs:
    """The teacher inputs of every hinted step (``hints`` in flat step order, as ``judge_steps`` returns)."""
    r = batch.rollouts
    if batch.prompt_ids is None or r.step_token_start is None:
        raise ValueError("OPD needs a batch with token ids (roll out with a ChatFormat)")
    if len(hints) != r.num_steps:
        raise ValueError(f"expected {r.num_steps} hints (one per step), got {len(hints)}")
    trajectory, start, contexts, actions = [], [], [], []
    s = 0
    for i, path in enumerate(batch.paths):
        for k, node_id in enumerate(path):
            hint = hints[s]
            if hint is not None:
                node = batch.nodes[node_id]
                assert node.gen_ids is not None
                contexts.append(hinted_context(batch.context_ids(i, k), hint, chat_format))
                actions.append(list(node.gen_ids))
                trajectory.append(i)
                start.append(int(r.step_token_start[s]))
            s += 1
    return TeacherInputs(torch.tensor(trajectory, dtype=torch.int64), torch.tensor(start, dtype=torch.int64),
                         contexts, actions)
