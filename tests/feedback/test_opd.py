"""OpenClaw-RL's judge and hinted teacher contexts: scores per step, hints, exact token alignment."""

from __future__ import annotations

import pytest
import torch

from stepcredit.envs import env_factory
from stepcredit.feedback.opd import Turn, Verdict, env_judge, hinted_contexts, judge_steps, with_judge_scores
from stepcredit.generation import ChatFormat, NoisyOracle, rollout_chains
from stepcredit.generation.hf import train_tokenizer
from stepcredit.generation.tiny import env_corpus

CALC = env_factory("calculator", depth=3, max_steps=6)


@pytest.fixture(scope="module")
def fmt() -> ChatFormat:
    return ChatFormat(train_tokenizer(env_corpus(("calculator",), tasks=8), vocab_size=300))


def turn(**kw: object) -> Turn:
    base = {"task": "t", "prompt": "p", "step": 0, "action": "add(a=2, b=3)", "next_state": "5", "terminal": False,
            "outcome": 0.0, "reference": "7"}
    return Turn(**{**base, **kw})  # type: ignore[arg-type]


def test_env_judge() -> None:
    assert env_judge(turn()) == Verdict(0)  # a call that ran: its result alone does not judge it
    error = env_judge(turn(next_state="Error: division by zero"))
    assert error == Verdict(-1, "Avoid add(a=2, b=3): it fails (Error: division by zero).")
    assert env_judge(turn(action="answer 7", next_state="Correct.", terminal=True, outcome=1.0)) == Verdict(1)
    wrong = env_judge(turn(action="answer 6", next_state="The task is not solved.", terminal=True))
    assert wrong == Verdict(-1, "The correct answer is 7.")
    assert env_judge(turn(action="answer 6", terminal=True, reference=None)) == Verdict(-1, None)
    # a turn that hit the budget with a tool call is not an answer
    assert env_judge(turn(terminal=True)) == Verdict(0)


def test_votes_majority_and_the_longest_hint() -> None:
    batch = rollout_chains(CALC, NoisyOracle(0.3, seed=0), range(3), group_size=2, seed=0)
    votes = iter([Verdict(1, "short"), Verdict(-1, "a longer useful hint"),
                  Verdict(-1, "the longest useful hint")] * 100)
    scores, hints = judge_steps(batch, lambda t: next(votes), votes=3)
    s = batch.rollouts.num_steps
    assert scores.tolist() == [-1.0] * s and hints == ["the longest useful hint"] * s
    tie = iter([Verdict(1), Verdict(-1)] * 100)
    scores, hints = judge_steps(batch, lambda t: next(tie), votes=2)
    assert scores.tolist() == [0.0] * s and hints == [None] * s
    # hints of 10 characters or fewer are no hints (OpenClaw's threshold)
    _, hints = judge_steps(batch, lambda t: Verdict(-1, "0123456789"))
    assert hints == [None] * s
    with pytest.raises(ValueError, match="step 0 of trajectory 0"):
        judge_steps(batch, lambda t: Verdict(2))
    with pytest.raises(ValueError, match="votes"):
        judge_steps(batch, env_judge, votes=0)


def test_scores_follow_the_flat_step_order_and_fill_the_prm_column() -> None:
    batch = rollout_chains(CALC, NoisyOracle(0.5, seed=1), range(4), group_size=2, seed=0)
    seen: list[tuple[str, int]] = []

    def judge(t: Turn) -> Verdict:
        seen.append((t.action, t.step))
        return Verdict(1 if t.step % 2 else -1)

    scores, _ = judge_steps(batch, judge)
    r = batch.rollouts
    assert [a for a, _ in seen] == r.texts.action.to_pylist()
    position = torch.arange(r.num_steps) - r.step_offsets[r.step_traj]  # the step's index in its trajectory
    assert torch.equal(scores, torch.where(position % 2 == 1, 1.0, -1.0))
    assert torch.equal(with_judge_scores(batch, scores).rollouts.prm, scores)  # type: ignore[arg-type]


def test_teacher_contexts_append_the_hint_and_score_the_original_tokens(fmt: ChatFormat) -> None:
    batch = rollout_chains(CALC, NoisyOracle(0.5, seed=2), range(4), group_size=2, seed=0, chat_format=fmt)
    r = batch.rollouts
    hints = [f"hint number {s}" if s % 3 == 0 else None for s in range(r.num_steps)]
    inputs = hinted_contexts(batch, hints, fmt)
    assert len(inputs.contexts) == sum(h is not None for h in hints)
    assert batch.prompt_ids is not None and batch.response_ids is not None and r.step_token_start is not None
    k = 0
    for s, hint in enumerate(hints):
        if hint is None:
            continue
        i = int(r.step_traj[s])
        start = int(r.step_token_start[s])
        assert int(inputs.trajectory[k]) == i and int(inputs.start[k]) == start
        # the student's context: the prompt and every earlier response token, as the policy saw them
        student = [*batch.prompt_ids[i], *batch.response_ids[i, :start].tolist()]
        assert inputs.contexts[k] == [*student[:-1], *fmt.encode_feedback(hint)]
        # exactly the student's tokens
        n = len(inputs.actions[k])
        assert inputs.actions[k] == batch.response_ids[i, start : start + n].tolist()
        assert start + n == int(r.step_token_end[s])  # type: ignore[index]
        k += 1
    with pytest.raises(ValueError, match="one per step"):
        hinted_contexts(batch, hints[:-1], fmt)
    plain = rollout_chains(CALC, NoisyOracle(0.5, seed=2), range(1), group_size=1)
    with pytest.raises(ValueError, match="token ids"):
        hinted_contexts(plain, [None] * plain.rollouts.num_steps, fmt)
