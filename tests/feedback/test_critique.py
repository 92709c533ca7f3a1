"""Critique-GRPO's generation side: critiques, refinements by the policy, one per group in slot 0."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
import torch

from stepcredit.envs import env_factory
from stepcredit.feedback.critique import Attempt, env_critic, rollout_critique_chains
from stepcredit.generation import ChatFormat, Context, Generation, NoisyOracle, OraclePolicy, rollout_chains
from stepcredit.generation.hf import train_tokenizer
from stepcredit.generation.tiny import env_corpus

CALC = env_factory("calculator", depth=2, max_steps=4)
BOOKING = env_factory("booking", depth=1)


@pytest.fixture(scope="module")
def fmt() -> ChatFormat:
    return ChatFormat(train_tokenizer(env_corpus(("calculator",), tasks=8), vocab_size=300))


class Reader:
    """Answers 0 at once (always wrong on this split's tasks), but answers the value a critique names."""

    def __init__(self) -> None:
        self.seen: list[Context] = []

    def act(self, contexts: Sequence[Context]) -> list[Generation]:
        out = []
        for c in contexts:
            self.seen.append(c)
            last = c.messages[-1]
            named = re.search(r"correct answer is (-?\d+)", last["content"]) if last["role"] == "user" else None
            out.append(Generation(f"answer {named.group(1)}" if named and len(c.messages) > 1 else "answer 0"))
        return out


def attempt(**kw: object) -> Attempt:
    base = {"task": "t", "prompt": "Compute 2 + 3", "actions": ("add(a=2, b=3)", "answer 6"),
            "observations": ("5", "The task is not solved."), "outcome": 0.0, "reference": "5"}
    return Attempt(**{**base, **kw})  # type: ignore[arg-type]


def test_env_critic_texts() -> None:
    assert env_critic(attempt(outcome=1.0)) == "Your answer is correct."
    assert env_critic(attempt()) == "Your final answer is incorrect. The correct answer is 5. Solve the task again."
    text = env_critic(attempt(actions=("div(a=2, b=0)", "add(a=2, b=3)"), observations=("Error: division by zero", "5"),
                              reference=None))
    assert text == ("Step 1 (div(a=2, b=0)) failed: Error: division by zero The run ended without an answer. "
                    "Solve the task again.")


def test_reference_answers_come_from_the_verifier() -> None:
    batch = rollout_chains(CALC, OraclePolicy(seed=0), range(5), group_size=1)
    finals = [batch.nodes[p[-1]].step.action for p in batch.paths]
    assert finals == [f"answer {ref}" for ref in batch.references or []]  # the oracle answers the reference
    assert rollout_chains(BOOKING, OraclePolicy(seed=0), range(2), group_size=1).references == [None, None]


def test_refinement_replaces_slot_zero_attached_to_the_original_prompt(fmt: ChatFormat) -> None:
    policy = Reader()
    batch = rollout_critique_chains(CALC, policy, range(3), group_size=4, chat_format=fmt, seed=1)
    r = batch.rollouts
    assert batch.off_policy is not None
    assert batch.off_policy.tolist() == [True, False, False, False] * 3
    assert r.outcome.tolist() == [1.0, 0.0, 0.0, 0.0] * 3  # every refinement read the answer off its critique
    assert batch.stats == {"refinements": 12.0, "refinement_success": 1.0, "refined_groups": 3.0,
                           "solved_refinements": 3.0}
    # attached to the task prompt: the prompt ids are the on-policy prompt's, the response is the refinement
    assert batch.prompt_ids is not None and batch.response_ids is not None and batch.references is not None
    for g in range(3):
        assert batch.prompt_ids[4 * g] == batch.prompt_ids[4 * g + 1]
        assert fmt.decode_action(batch.response_ids[4 * g].tolist()) == f"answer {batch.references[4 * g]}"
    # the refinement saw the task, the attempt, its result and the critique — as ids, by concatenation
    refining = [c for c in policy.seen if len(c.messages) > 1]
    assert len(refining) == 12
    c = refining[0]
    assert [m["role"] for m in c.messages] == ["user", "assistant", "tool", "user"]
    assert c.messages[1]["content"] == "answer 0" and "correct answer is" in c.messages[3]["content"]
    assert c.token_ids is not None
    want = [*batch.prompt_ids[0], *fmt.encode_action("answer 0"),
            *fmt.encode_observation("The task is not solved.")[:-1], *fmt.encode_feedback(c.messages[3]["content"])]
    assert c.token_ids == want


def test_selection_first_solved_else_first_best() -> None:
    class Stubborn(Reader):  # ignores critiques: refinements fail like the attempts
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            return [Generation("answer 0") for _ in contexts]

    batch = rollout_critique_chains(CALC, Stubborn(), range(2), group_size=3, seed=0)
    assert batch.off_policy is not None and batch.off_policy.tolist() == [True, False, False] * 2
    assert batch.stats["refinement_success"] == 0.0 and batch.stats["solved_refinements"] == 0.0
    # the first of equals: the refinement of attempt 0, whose path comes right after the group's attempts
    assert batch.rollouts.outcome.tolist() == [0.0] * 6


def test_groups_without_failures_are_left_on_policy() -> None:
    batch = rollout_critique_chains(CALC, OraclePolicy(seed=0), range(3), group_size=2, seed=0)
    assert batch.off_policy is not None and not bool(batch.off_policy.any())
    assert batch.stats["refinements"] == 0.0
    everything = rollout_critique_chains(CALC, OraclePolicy(seed=0), range(3), group_size=2, seed=0, refine="all")
    assert everything.stats["refinements"] == 6.0 and everything.off_policy is not None
    assert everything.off_policy.tolist() == [True, False] * 3


def test_deterministic_and_the_on_policy_part_is_the_plain_chains() -> None:
    a = rollout_critique_chains(CALC, NoisyOracle(0.5, seed=3), range(4), group_size=3, seed=5)
    b = rollout_critique_chains(CALC, NoisyOracle(0.5, seed=3), range(4), group_size=3, seed=5)
    assert a.rollouts.equals(b.rollouts) and a.stats == b.stats
    plain = rollout_chains(CALC, NoisyOracle(0.5, seed=3), range(4), group_size=3, seed=5)
    on = ~a.off_policy  # type: ignore[operator]
    assert torch.equal(a.rollouts.outcome[on], plain.rollouts.outcome[on])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="group_size >= 2"):
        rollout_critique_chains(CALC, OraclePolicy(), range(1), group_size=1)
    with pytest.raises(ValueError, match="refine"):
        rollout_critique_chains(CALC, OraclePolicy(), range(1), refine="some")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="critic must return a string"):
        rollout_critique_chains(CALC, Reader(), range(1), group_size=2, critic=lambda a: 3)  # type: ignore[arg-type,return-value]


def test_a_separate_refiner_and_refinements_kept_with_their_critique_context(fmt: ChatFormat) -> None:
    """``attach="critique"``: warm-start demonstrations of using a critique (its context is the prompt)."""
    batch = rollout_critique_chains(CALC, Reader(), range(2), group_size=2, chat_format=fmt, seed=0,
                                    refiner=OraclePolicy(seed=0), attach="critique")
    assert batch.off_policy is not None and batch.prompt_ids is not None and batch.response_ids is not None
    assert batch.stats["refinement_success"] == 1.0  # the oracle redid them
    for i in torch.nonzero(batch.off_policy).squeeze(1).tolist():
        prompt = batch.prompt_ids[i]
        task_prompt = batch.prompt_ids[i + 1]
        assert prompt[: len(task_prompt)] == task_prompt and len(prompt) > len(task_prompt)
        critique_ids = fmt.encode_feedback(env_critic(Attempt("", "", ("answer 0",), ("The task is not solved.",), 0.0,
                                                              batch.references[i])))  # type: ignore[index]
        assert prompt[-len(critique_ids) :] == critique_ids
    with pytest.raises(ValueError, match="attach"):
        rollout_critique_chains(CALC, Reader(), range(1), group_size=2, attach="both")  # type: ignore[arg-type]
