"""Evaluative and directive feedback per turn: OpenClaw-RL's judge and hinted teacher contexts.

Wang et al. 2026, "OpenClaw-RL: Train Any Agent Simply by Talking", arXiv:2603.10165 (released code:
``openclaw-opd/openclaw_opd_api_server.py``, ``openclaw-combine/combine_loss.py``). The state that
follows an action (a tool result, an error, the verifier's verdict) says two things:

* **evaluative** — how good the action was: a judge's score ``r_t ∈ {+1, −1, 0}``;
* **directive** — how it should have differed: a hint. The *teacher* is the same model with the hint
  appended to the turn's context, ``s_t ⊕ hint``; its log-probabilities of the *original* action tokens
  against the sampling policy's give a token-level advantage ``log π_teacher − log π_old`` (on-policy
  distillation, OPD; ``opd_advantages`` below).

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
from typing import Any, Literal

import torch
from torch import Tensor

from stepcredit.core.registry import PositiveInt
from stepcredit.envs.actions import parse_action
from stepcredit.feedback.base import Feedback, Step
from stepcredit.generation.chat_format import ChatFormat
from stepcredit.generation.engine import TrainingBatch
from stepcredit.generation.scoring import score_tokens

__all__ = [
    "MIN_HINT_CHARS", "OPD", "Judge", "OPDOptions", "Turn", "Verdict", "answer_hint", "env_judge", "hinted_context",
    "hinted_contexts", "judge_steps", "opd_advantages", "teacher_logprobs", "with_judge_scores",
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


def judge_steps(batch: TrainingBatch, judge: Judge = env_judge, *, votes: int = 1) -> tuple[Tensor, list[str | None]]:
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


def with_judge_scores(batch: TrainingBatch, scores: Tensor) -> TrainingBatch:
    """The batch with the judge's scores as the rollouts' ``prm`` step column."""
    return replace(batch, rollouts=replace(batch.rollouts, prm=scores))


@dataclass(frozen=True)
class TeacherInputs:
    """The hinted steps: trajectory, token span in the response, teacher context ids, the action's ids."""

    trajectory: Tensor  # (H,) int64
    start: Tensor  # (H,) first response token of the step
    contexts: list[list[int]]  # s_t ⊕ hint, as ids
    actions: list[list[int]]  # the step's generated ids (the student's tokens)


def hinted_contexts(batch: TrainingBatch, hints: list[str | None], chat_format: ChatFormat) -> TeacherInputs:
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


def teacher_logprobs(policy: Any, batch: TrainingBatch, hints: list[str | None], temperature: float,
                     chunk: int = 64) -> tuple[Tensor, Tensor]:
    """OPD's teacher pass: ``log π(y_j | s_t ⊕ hint, y_<j)`` of every hinted step's *original* tokens,
    placed at their response positions ``(N, T)``, and the ``(N, T)`` mask of those tokens. The same
    model (no gradient) on contexts built by ``hinted_contexts``."""
    assert batch.response_ids is not None
    shape = batch.response_ids.shape
    teacher = torch.zeros(shape, dtype=torch.float32)
    hinted = torch.zeros(shape, dtype=torch.bool)
    inputs = hinted_contexts(batch, hints, policy.format)
    if not inputs.actions:
        return teacher, hinted
    logp, valid = score_tokens(policy, inputs.contexts, inputs.actions, temperature, chunk)
    rows, cols = torch.nonzero(valid, as_tuple=True)
    target_rows, target_cols = inputs.trajectory[rows], inputs.start[rows] + cols
    teacher[target_rows, target_cols] = logp[rows, cols]
    hinted[target_rows, target_cols] = True
    return teacher, hinted


def opd_advantages(
    advantages: Tensor,
    teacher_log_prob: Tensor,
    old_log_prob: Tensor,
    hinted: Tensor,
    *,
    w_rl: float = 1.0,
    w_opd: float = 1.0,
) -> Tensor:
    """OpenClaw-RL's combined evaluative + directive token advantage (Wang et al. 2026,
    arXiv:2603.10165, ``openclaw-combine/combine_loss.py``):

        A_j = w_rl · A_j^RL + w_opd · (log π_teacher(y_j | s ⊕ hint, y_<j) − log π_old(y_j | s, y_<j))

    where ``hinted`` (the tokens of turns with a hint); ``w_rl · A_j^RL`` elsewhere (a turn without a
    hint gives no OPD sample). ``A^RL`` is any recipe's token advantage; the log-ratio is unnormalised
    (it can be large: the PPO clip bounds the step). Weights default to the released 1 and 1."""
    if not (advantages.shape == teacher_log_prob.shape == old_log_prob.shape == hinted.shape):
        raise ValueError(f"shapes differ: advantages {tuple(advantages.shape)}, "
                         f"teacher {tuple(teacher_log_prob.shape)}, old {tuple(old_log_prob.shape)}, "
                         f"hinted {tuple(hinted.shape)}")
    directive = torch.where(hinted.bool(), teacher_log_prob - old_log_prob, 0.0)
    return w_rl * advantages + w_opd * directive


# ------------------------------------------------------------------------------ in the RL loop
@dataclass(frozen=True)
class OPDOptions:
    """OpenClaw-RL's options (``TrainConfig.opd``): ``judge`` "env" (``env_judge``) or, from Python, any
    ``Turn -> Verdict``; ``votes`` judge calls per step (their majority); the combined advantage
    ``A = w_rl · A + w_opd · (log π_teacher − log π_old)``."""

    judge: Literal["env"] | Callable[[Turn], Verdict] = "env"
    votes: PositiveInt = 1
    w_rl: float = 1.0
    w_opd: float = 1.0


class OPD(Feedback):
    """OpenClaw-RL in the loop: after the rollouts, a judge scores every step (the ``prm`` column, which
    a recipe may read) and hints it; after the recipe, the hinted teacher's log-ratio joins the
    advantages of the hinted steps' tokens."""

    name = "opd"

    def __init__(self, options: OPDOptions) -> None:
        self.options = options

    def after_rollout(self, step: Step) -> None:
        judge = env_judge if self.options.judge == "env" else self.options.judge
        scores, hints = judge_steps(step.batch, judge, votes=self.options.votes)
        step.batch = with_judge_scores(step.batch, scores)
        step.rollouts = step.batch.rollouts
        step.notes["opd_hints"] = hints
        step.stats["hinted_steps"] = float(sum(h is not None for h in hints) / max(len(hints), 1))
        step.stats["judge_score_mean"] = float(scores.mean()) if scores.numel() else 0.0

    def advantages(self, step: Step, kept: Tensor, advantages: Tensor) -> Tensor:
        batch = step.batch
        assert batch.old_logprobs is not None
        teacher, hinted = teacher_logprobs(step.policy, batch, step.notes["opd_hints"], step.temperature)
        ratio = (teacher - batch.old_logprobs)[hinted]
        step.stats["opd_mean"] = float(ratio.mean()) if ratio.numel() else 0.0  # E = −KL(π_old ‖ π_teacher)
        step.stats["opd_abs_mean"] = float(ratio.abs().mean()) if ratio.numel() else 0.0
        return opd_advantages(advantages, teacher[kept], batch.old_logprobs[kept], hinted[kept],
                              w_rl=self.options.w_rl, w_opd=self.options.w_opd)
