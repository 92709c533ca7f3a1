"""The SkillRL-style skill bank: distillation, retrieval, JSON, evolution, the prompt wrapper."""

from __future__ import annotations

import dataclasses
import json
import re
import string
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit.envs import BookingEnv, CalculatorEnv, LookupEnv, env_factory
from stepcredit.feedback.skills import (
    HEADER,
    SEPARATOR,
    Episode,
    LLMSummariser,
    RuleSummariser,
    Skill,
    SkillBank,
    SkillBankError,
    SkillPrompt,
    abstract,
    abstract_action,
    distill,
    episodes_from_batch,
    evolve,
    render,
    strip_skills,
    success_rates,
    task_type,
)
from stepcredit.generation import Context, Generation, NoisyOracle, OraclePolicy, rollout_chains

FAMILIES = ("calculator", "lookup", "booking")


@pytest.fixture(scope="module")
def batches():
    return {
        f: rollout_chains(env_factory(f, depth=3), NoisyOracle(0.25, seed=0), range(12), group_size=4, seed=0)
        for f in FAMILIES
    }


@pytest.fixture(scope="module")
def episodes(batches):
    return {f: episodes_from_batch(b) for f, b in batches.items()}


def calc(actions: Sequence[str], observations: Sequence[str], success: bool, expr: str = "(5 * 18) - 12") -> Episode:
    prompt = f"Compute {expr} with the tools, one operation per call, then give the value with: answer <value>."
    return Episode(prompt, list(actions), list(observations), success)


# ------------------------------------------------------------------------------------------ task types
def test_task_type_of_every_family_from_real_prompts() -> None:
    calc_env = CalculatorEnv(depth=3)
    for i in range(8):
        obs, _ = calc_env.reset(options={"task": i})
        ops = sorted({n.op for n in calc_env._state.nodes}, key=["add", "sub", "mul", "div"].index)
        assert task_type(obs) == "calculator:" + "+".join(ops)
    lookup, seen = LookupEnv(depth=2), set()
    for i in range(40):
        obs, _ = lookup.reset(options={"task": i})
        assert task_type(obs) == f"lookup:{lookup._state.kind}"
        seen.add(lookup._state.kind)
    assert len(seen) == 5
    booking = BookingEnv(depth=3)
    for i in range(10):
        obs, _ = booking.reset(options={"task": i})
        kinds = {g.kind for g in booking._state.goals}
        assert task_type(obs) == "booking:" + "+".join(k for k in ("book", "cancel", "bags") if k in kinds)
    assert task_type("Tell me a joke.") == "general"


def test_task_type_ignores_a_skill_block_in_front() -> None:
    obs, _ = CalculatorEnv().reset(options={"task": 0})
    block = render([Skill("g", "Compute 1 + 2", "answer [N]", kind="general")])
    assert task_type(block + SEPARATOR + obs) == task_type(obs) != "general"
    assert strip_skills(block + SEPARATOR + obs) == obs


# ------------------------------------------------------------------------------------------ abstraction
@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("add(a=3, b=4)", "add(a=[N], b=[N])"),
        ('find_user(name="Luce Grey")', "find_user(name=[NAME])"),
        ("list_orders(user_id=u229)", "list_orders(user_id=[ID])"),
        ("get_order(order_id=o7)", "get_order(order_id=[ID])"),
        (
            "search_flights(origin=DFW, destination=ORD, date=2024-09-29)",
            "search_flights(origin=[CODE], destination=[CODE], date=[DATE])",
        ),
        (
            "book_flight(user_id=hugo_kim_8172, flight=HA998, cabin=economy, payment_id=cc_8862)",
            "book_flight(user_id=[ID], flight=[ID], cabin=economy, payment_id=[ID])",
        ),
        ("cancel_reservation(reservation_id=BNHQVA)", "cancel_reservation(reservation_id=[ID])"),
        ("answer 42", "answer [N]"),
        ("answer -3.5", "answer [N]"),
        ("answer done", "answer done"),
        ("answer Bright Blender", "answer [NAME]"),
        ("add(a=1, b=2); mul(a=3, b=3)", "add(a=[N], b=[N]); mul(a=[N], b=[N])"),
        (
            json.dumps({"tool_calls": [{"function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}),
            "add(a=[N], b=[N])",
        ),
        ("div(a=5, b=", "div(a=[N], b="),
    ],
)
def test_abstract_action(action: str, expected: str) -> None:
    assert abstract_action(action) == expected
    assert abstract_action(expected) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Error: no user with id 'u12'", "Error: no user with id '[ID]'"),
        ("Error: no user named 'Lucy Grey'", "Error: no user named '[NAME]'"),
        ("Error: 7 is not divisible by 2", "Error: [N] is not divisible by [N]"),
        ('{"id":"p303","name":"Soft Blender","cat":"garden"}', '{"id":"[ID]","name":"[NAME]","cat":"garden"}'),
        ("booked 2024-08-05 12:59", "booked [DATE] [TIME]"),
        ("Ann Lee's most recent order", "Ann Lee's most recent order"),
    ],
)
def test_abstract_text(text: str, expected: str) -> None:
    assert abstract(text) == expected


_TRICKY = st.sampled_from([*"aZ19_-.:'\"[]\\ \n(),=", "[N]", "[ID]", "[NAME]", "u12", "2024-01-02", "12:30", "ABC"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_TRICKY | st.characters(), max_size=30).map("".join))
def test_abstraction_is_idempotent(text: str) -> None:
    once = abstract(text)
    assert abstract(once) == once
    template = abstract_action(text)
    assert abstract_action(template) == template


_VALUE = st.integers(-(10**6), 10**6) | st.sampled_from(["Ann Lee", "u12", "economy", "HA998", "2024-02-03", "x"])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["add", "get_order", "book_flight"]), _VALUE, _VALUE), min_size=1, max_size=3)
)
def test_action_templates_are_idempotent(calls: list[tuple[str, object, object]]) -> None:
    action = "; ".join(f"{n}(a={json.dumps(a)}, b={json.dumps(b)})" for n, a, b in calls)
    once = abstract_action(action)
    assert abstract_action(once) == once
    assert not re.search(r"\d", once)


# ------------------------------------------------------------------------------------------ the rule summariser
def test_successes_become_counted_plan_templates() -> None:
    ok = calc(["mul(a=18, b=5)", "sub(a=90, b=12)", "answer 78"], ["90", "78", "Correct."], True)
    other = calc(["mul(a=5, b=18)", "sub(a=90, b=12)", "answer 78"], ["90", "78", "Correct."], True)
    noisy = calc(
        ["div(a=7, b=2)", "mul(a=5, b=18)", "sub(a=90, b=12)", "answer 78"],
        ["Error: 7 is not divisible by 2", "90", "78", "Correct."],
        True,
    )
    skills = RuleSummariser()([ok, other, noisy])
    assert skills == [
        Skill(
            skills[0].skill_id,
            "Plan that worked (3 runs)",
            "mul(a=[N], b=[N]) -> sub(a=[N], b=[N]) -> answer [N]",
            "calculator:sub+mul: computing an expression with sub, mul",
            "task",
            "calculator:sub+mul",
        )
    ]


def test_a_tool_error_becomes_a_lesson() -> None:
    failed = calc(["div(a=7, b=2)", "answer 3"], ["Error: 7 is not divisible by 2", "The task is not solved."], False)
    bank = distill([failed])
    (lesson,) = [s for s in bank.skills if s.when_to_apply.startswith("calling div (it answered")]
    assert re.fullmatch(r"err_\d{3}", lesson.skill_id)
    assert lesson == Skill(
        lesson.skill_id,
        "div(a=[N], b=[N])",
        "Call div only when a is a multiple of b: div is exact integer division.",
        "calling div (it answered: Error: [N] is not divisible by [N])",
        "mistake",
        "calculator:sub+mul",
    )


def test_a_wrong_final_answer_and_a_spent_turn_budget_become_lessons() -> None:
    wrong = calc(["mul(a=18, b=5)", "sub(a=90, b=12)", "answer 80"], ["90", "78", "The task is not solved."], False)
    (lesson,) = RuleSummariser().lessons(wrong)
    assert lesson.mistake == "answer [N] that differs from the last result"
    assert lesson.principle == "Answer exactly the value the last operation returned; never adjust it."
    stuck = calc(["mul(a=18, b=5)", "mul(a=18, b=5)", "mul(a=18, b=5)"], ["90", "90", "90"], False)
    (lesson,) = RuleSummariser().lessons(stuck)
    assert (lesson.trigger, lesson.mistake) == (
        "the turn budget ran out before an answer",
        "repeating mul(a=[N], b=[N])",
    )


def test_an_ungrounded_argument_and_a_wrong_operation_become_lessons() -> None:
    typo = calc(["mul(a=18, b=5)", "sub(a=90, b=14)", "answer 76"], ["90", "76", "The task is not solved."], False)
    (lesson,) = RuleSummariser().lessons(typo)
    assert lesson.mistake == "sub(a=[N], b=[N])"
    assert lesson.trigger == "calling sub with a b that neither the task nor a tool result showed"
    swapped = calc(["mul(a=18, b=5)", "add(a=90, b=12)", "answer 102"], ["90", "102", "The task is not solved."], False)
    (lesson,) = RuleSummariser().lessons(swapped)
    assert lesson.principle.startswith("Use only the operations written in the expression")
    # a cut-off episode cannot tell where a value came from: no ungrounded-argument lesson
    assert all("never guess" not in x.principle for x in RuleSummariser().lessons(typo.window(2)))


def test_a_real_tool_error_from_the_environment() -> None:
    class DivideByZero(OraclePolicy):
        def act(self, contexts: Sequence[Context]) -> list[Generation]:
            return [Generation("div(a=7, b=0)" if c.step == 0 else "answer 0") for c in contexts]

    batch = rollout_chains(env_factory("calculator", depth=2), DivideByZero(), range(2), group_size=1)
    eps = episodes_from_batch(batch)
    assert not any(e.success for e in eps)
    lessons = [s for s in distill(eps).skills if s.kind == "mistake"]
    by_principle = {s.principle: s for s in lessons}
    zero = by_principle["Never divide by zero: check the divisor before calling div."]
    assert zero.when_to_apply == "calling div (it answered: Error: division by zero)"


def test_real_rollouts_give_templates_and_lessons_that_match_the_labels(batches, episodes) -> None:
    summariser = RuleSummariser()
    for family, batch in batches.items():
        eps = episodes[family]
        bank = distill(eps)
        plans = [s for s in bank.skills if s.kind == "task"]
        assert plans and all(s.task_type and s.task_type.startswith(family + ":") for s in plans)
        assert all(re.search(r"-> answer (\[N\]|\[NAME\]|done)$", s.principle) for s in plans)
        assert all(not re.search(r"\d", s.principle) for s in plans)  # every entity abstracted
        assert any(s.kind == "mistake" for s in bank.skills)
        # audit (labels read here only): the first lesson of a failed run names a step labelled wrong
        labels, hits, failed = batch.rollouts.label.tolist(), 0, 0
        offsets = batch.rollouts.step_offsets.tolist()
        for i, e in enumerate(eps):
            if e.success:
                continue
            failed += 1
            wrong = {abstract_action(e.actions[s]) for s in range(len(e.actions)) if labels[offsets[i] + s] == -1}
            first = summariser.lessons(e)[0].mistake
            hits += any(first.startswith(w) for w in wrong)
        assert failed >= 10 and hits / failed >= 0.9, (family, hits, failed)


def test_scrambled_labels_give_the_same_bank(batches) -> None:
    for batch in batches.values():
        r = batch.rollouts
        g = torch.Generator().manual_seed(0)
        scrambled = dataclasses.replace(
            r,
            label=r.label[torch.randperm(r.num_steps, generator=g)],
            call_label=torch.zeros_like(r.call_label),
        )
        assert distill(episodes_from_batch(scrambled)).to_json() == distill(episodes_from_batch(batch)).to_json()


def test_episodes_are_the_batch_texts(batches) -> None:
    batch = batches["lookup"]
    eps = episodes_from_batch(batch)
    for e, path, outcome in zip(eps, batch.paths, batch.rollouts.outcome.tolist(), strict=True):
        assert e.actions == [batch.nodes[n].step.action for n in path]
        assert e.observations == [batch.nodes[n].step.observation for n in path]
        assert e.success == (outcome == 1.0) and e.task_type.startswith("lookup:")
    rates = success_rates(eps)
    assert list(rates) == sorted(rates) and all(0 <= v <= 1 for v in rates.values())


def test_episode_checks_and_window() -> None:
    with pytest.raises(ValueError, match="one observation per action"):
        Episode("p", ["a"], [], False)
    with pytest.raises(TypeError, match="success must be a bool"):
        Episode("p", [], [], 1)  # type: ignore[arg-type]
    e = calc(["a", "b", "c"], ["1", "2", "3"], False)
    w = e.window(2)
    assert (w.actions, w.observations, w.skipped, w.prompt) == (["b", "c"], ["2", "3"], 1, e.prompt)


# ------------------------------------------------------------------------------------------ the bank
def hand_bank() -> SkillBank:
    general = [Skill(f"gen_{i:03d}", f"General {i}", f"Principle {i}.", kind="general") for i in range(1, 9)]
    return SkillBank(
        (
            Skill("err_001", "answer [N] early", "Check first.", "answering", "mistake", "calc:add"),
            *general,
            Skill("tsk_001", "Plan", "add -> answer [N]", "calc:add tasks", "task", "calc:add"),
            Skill("tsk_002", "Plan B", "find -> answer [N]", "", "task", "lookup:x"),
            Skill("dyn_001", "Learned", "Never repeat calls.", kind="general"),
            *(Skill(f"com_{i}", f"common {i}", f"Common {i}.", kind="mistake") for i in range(7)),
            Skill("tsk_003", "Plan 2", "add -> add -> answer [N]", "", "task", "calc:add"),
        )
    )


def test_retrieval_is_template_mode_in_a_fixed_order() -> None:
    bank = hand_bank()
    got = [s.skill_id for s in bank.retrieve("calc:add", top_k=3)]
    assert got == ["dyn_001", "gen_001", "gen_002", "tsk_001", "tsk_003", "err_001", *(f"com_{i}" for i in range(5))]
    assert [s.skill_id for s in bank.retrieve("unknown", top_k=1)] == ["dyn_001", *(f"com_{i}" for i in range(5))]
    assert len(bank.retrieve("calc:add")) == 1 + 5 + 2 + 1 + 5
    assert bank.task_types == ("calc:add", "lookup:x")
    with pytest.raises(ValueError, match="top_k"):
        bank.retrieve("calc:add", top_k=-1)


def test_bank_json_round_trip_and_atomic_save(tmp_path: Path, episodes) -> None:
    for bank in (hand_bank(), distill(episodes["booking"]), SkillBank()):
        again = SkillBank.from_json(bank.to_json())
        assert again == bank and again.to_json() == bank.to_json()
    bank = hand_bank()
    path = bank.save(tmp_path / "bank.json")
    assert SkillBank.load(path) == bank
    SkillBank().save(path)  # overwrites in place
    assert SkillBank.load(path) == SkillBank()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.json"]  # no temporary file left


def test_skillrl_bank_files_load() -> None:
    text = json.dumps(
        {
            "general_skills": [{"skill_id": "gen_001", "title": "Explore", "principle": "Look.", "when_to_apply": "x"}],
            "task_specific_skills": {"clean": [{"skill_id": "cle_001", "title": "Sink", "principle": "Use it."}]},
            "common_mistakes": [
                {"mistake_id": "err_001", "description": "Loops.", "why_it_happens": "No map.", "how_to_avoid": "Map."}
            ],
            "metadata": {"source": "claude"},
        }
    )
    bank = SkillBank.from_json(text)
    assert bank.mistakes(None) == (Skill("err_001", "Loops.", "Map.", "No map.", "mistake", None),)
    assert bank.task_skills("clean")[0].when_to_apply == "" and bank.metadata == {"source": "claude"}


def _entry(**over: object) -> dict[str, object]:
    return {"skill_id": "s1", "title": "T", "principle": "P.", "when_to_apply": "W", **over}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[]", r"bank\.json: \$: expected a JSON object, got \[\]"),
        ('{"skills": []}', r"unknown key\(s\) 'skills'"),
        ('{"format": "v9"}', r"format.*expected 'stepcredit.skills/1'"),
        ('{"general_skills": {}}', r"general_skills: expected a list of skills"),
        (json.dumps({"general_skills": [_entry(title=3)]}), r"general_skills\[0\]\.title: expected a string, got 3"),
        (
            json.dumps({"general_skills": [_entry(principle="  ")]}),
            r"general_skills\[0\]\.principle: expected a non-empty",
        ),
        (
            json.dumps({"general_skills": [{"skill_id": "s1", "title": "T"}]}),
            r"general_skills\[0\]: missing field 'principle'",
        ),
        (json.dumps({"general_skills": [_entry(extra=1)]}), r"unknown key\(s\) 'extra'"),
        (json.dumps({"general_skills": [_entry(skill_id="a b")]}), r"skill_id: expected 1-100 letters"),
        (json.dumps({"general_skills": [_entry(kind="task")]}), r"general_skills\[0\]\.kind: expected 'general'"),
        (json.dumps({"general_skills": [_entry(), _entry()]}), r"skill ids must be unique; repeated: s1"),
        (json.dumps({"task_specific_skills": {"a": [_entry(task_type="b")]}}), r"\.task_type: expected 'a'"),
        (json.dumps({"task_specific_skills": {"a": "x"}}), r"task_specific_skills\['a'\]: expected a list"),
        (
            json.dumps({"common_mistakes": [_entry(task_type=7)]}),
            r"common_mistakes\[0\]\.task_type: expected a string or null",
        ),
        (json.dumps({"metadata": []}), r"metadata: expected a JSON object"),
        (json.dumps({"general_skills": [_entry(title=[[[["deep"]]]])]}), r"expected a string, got \[\[\["),
        ("[" * 100_000 + "]" * 100_000, r"nested too deeply"),
        (b'{"general_skills": []}\xff\xfe', r"not UTF-8 text \(invalid start byte at byte 22\)"),
        ('{"general_skills": [', r"invalid JSON"),
        ('{"metadata": {"n": 1' + "0" * 5000 + "}}", r"invalid JSON"),
    ],
)
def test_malformed_bank_files_name_the_file_field_and_expectation(
    tmp_path: Path, data: str | bytes, message: str
) -> None:
    path = tmp_path / "bank.json"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(SkillBankError, match=message) as info:
        SkillBank.load(path)
    assert str(info.value).startswith(str(path))


def test_loading_a_missing_file_or_saving_into_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SkillBankError, match="cannot read"):
        SkillBank.load(tmp_path / "none.json")
    with pytest.raises(SkillBankError, match="does not exist"):
        SkillBank().save(tmp_path / "no" / "bank.json")
    with pytest.raises(SkillBankError, match="is a folder"):
        SkillBank().save(tmp_path)


def test_skill_checks() -> None:
    with pytest.raises(SkillBankError, match="task_type: expected a task type for a task skill"):
        Skill("a", "t", "p", kind="task")
    with pytest.raises(SkillBankError, match="task_type: expected null for a general skill"):
        Skill("a", "t", "p", kind="general", task_type="x")
    with pytest.raises(SkillBankError, match="kind: expected one of general, task, mistake"):
        Skill("a", "t", "p", kind="tip", task_type="x")  # type: ignore[arg-type]
    with pytest.raises(SkillBankError, match="no lone surrogates"):
        Skill("a", "t", "p\ud800", kind="general")
    with pytest.raises(SkillBankError, match="metadata: expected JSON values only"):
        SkillBank(metadata={"when": object()})
    with pytest.raises(SkillBankError, match=r"skills\[0\]: expected a Skill"):
        SkillBank(({"skill_id": "a"},))  # type: ignore[arg-type]


_TEXT = st.text(min_size=1, max_size=30).filter(str.strip)
_SKILL = st.builds(
    lambda i, title, principle, when, kind, t: Skill(
        f"s{i}", title, principle, when, kind, None if kind == "general" else t if kind == "task" else t or None
    ),
    st.integers(0, 10**6),
    _TEXT,
    _TEXT,
    st.text(max_size=20),
    st.sampled_from(["general", "task", "mistake"]),
    st.sampled_from(["calculator:add", "lookup:total_recent", "x"]),
)
_SKILLS = st.lists(_SKILL, max_size=8, unique_by=lambda s: s.skill_id)


@settings(max_examples=100, deadline=None)
@given(_SKILLS)
def test_any_bank_round_trips_through_json(skills: list[Skill]) -> None:
    bank = SkillBank(tuple(skills))
    assert SkillBank.from_json(bank.to_json().encode()) == bank
    assert sorted(bank.skills, key=lambda s: s.skill_id) == sorted(skills, key=lambda s: s.skill_id)


@settings(max_examples=100, deadline=None)
@given(_SKILLS, st.text(max_size=40))
def test_render_is_one_printable_line_per_skill_and_strips_off(skills: list[Skill], obs: str) -> None:
    block = render(skills)
    if not skills:
        assert block == ""
        return
    lines = block.split("\n")
    assert lines[0] == HEADER and len(lines) == len(skills) + 1
    assert SEPARATOR not in block and set(block) <= set(string.printable)
    assert strip_skills(block + SEPARATOR + obs) == obs


# ------------------------------------------------------------------------------------------ the LLM summariser
LLM_REPLY = json.dumps(
    [
        {"title": "Exact division", "principle": "Call div only on multiples.", "when_to_apply": "dividing"},
        {"title": "Be general", "principle": "Read errors.", "when_to_apply": "", "kind": "general", "task_type": None},
        {"skill_id": "dyn_009", "title": "No", "principle": "Fix.", "when_to_apply": "w", "kind": "mistake"},
    ]
)


def test_llm_summariser_sends_a_prompt_and_parses_the_reply() -> None:
    prompts: list[str] = []

    def fake(prompt: str) -> str:
        prompts.append(prompt)
        return "```json\n" + LLM_REPLY + "\n```"

    failed = calc(["div(a=7, b=2)", "answer 3"], ["Error: 7 is not divisible by 2", "The task is not solved."], False)
    skills = LLMSummariser(fake)([failed])
    assert "Task Type: calculator:sub+mul" in prompts[0] and "Outcome: FAILURE" in prompts[0]
    assert "Action: div(a=7, b=2)" in prompts[0] and "1-3 skills" in prompts[0]
    assert skills == [
        Skill("llm_001", "Exact division", "Call div only on multiples.", "dividing", "task", "calculator:sub+mul"),
        Skill("llm_002", "Be general", "Read errors.", "", "general", None),
        Skill("llm_003", "No", "Fix.", "w", "mistake", "calculator:sub+mul"),
    ]
    assert len(LLMSummariser(lambda p: LLM_REPLY, max_skills=2)([failed])) == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("Sure! Here are the skills.", r"LLM reply: invalid JSON"),
        ('{"title": "x"}', r"expected a JSON array of skills"),
        ("[]", r"expected at least one skill"),
        ('["x"]', r"\[0\]: expected a skill object"),
        ('[{"title": "T", "when_to_apply": "w"}]', r"\[0\]: missing field 'principle'"),
        ('[{"title": "T", "principle": "P", "when_to_apply": "w", "why": 1}]', r"unknown key\(s\) 'why'"),
        ('[{"title": "T", "principle": "P", "when_to_apply": "w", "kind": "tip"}]', r"\[0\]\.kind: expected one of"),
        ('[{"title": "T", "principle": 5, "when_to_apply": "w"}]', r"\[0\]\.principle: expected a string"),
        ('[{"title": "T", "principle": "P"}]', r"missing field 'when_to_apply'"),
        (b"\xff[]", r"not UTF-8"),
        (None, r"LLM reply: expected JSON text, got NoneType"),
    ],
)
def test_llm_summariser_rejects_malformed_replies(reply: object, message: str) -> None:
    e = calc(["answer 3"], ["The task is not solved."], False)
    with pytest.raises(SkillBankError, match=message):
        LLMSummariser(lambda p: reply)([e])  # type: ignore[arg-type, return-value]


def test_a_task_skill_needs_a_type_when_episodes_span_several() -> None:
    a = calc(["answer 3"], ["x"], False)
    b = calc(["answer 3"], ["x"], False, expr="1 + 2")
    reply = '[{"title": "T", "principle": "P", "when_to_apply": "w", "kind": "task"}]'
    with pytest.raises(SkillBankError, match=r"\[0\]\.task_type: expected a task type"):
        LLMSummariser(lambda p: reply)([a, b])
    assert LLMSummariser(lambda p: reply.replace("task", "general"))([a, b])[0].kind == "general"


@settings(max_examples=60, deadline=None)
@given(_SKILLS.filter(bool))
def test_llm_replies_round_trip(skills: list[Skill]) -> None:
    reply = json.dumps([{k: v for k, v in dataclasses.asdict(s).items() if k != "skill_id"} for s in skills])
    parsed = LLMSummariser(lambda p: reply, max_skills=len(skills)).parse(reply)
    assert [dataclasses.replace(s, skill_id="x") for s in parsed] == [
        dataclasses.replace(s, skill_id="x") for s in skills
    ]


# ------------------------------------------------------------------------------------------ distill and evolve
def test_distill_caps_each_type_and_numbers_ids(episodes) -> None:
    eps = episodes["calculator"] + episodes["lookup"]
    bank = distill(eps, max_per_type=1)
    for t in bank.task_types:
        assert len(bank.task_skills(t)) <= 1 and len(bank.mistakes(t)) <= 1
    ids = [s.skill_id for s in bank.skills]
    assert all(re.fullmatch(r"(gen|tsk|err)_\d{3}", i) for i in ids)
    # the grounding lesson occurs for calculator and lookup: promoted to one general skill
    (grounding,) = [s for s in bank.general if "never guess or alter a value" in s.principle]
    assert grounding.when_to_apply == "any task (seen in calculator, lookup tasks)"
    assert distill(eps).to_json() == distill(list(eps)).to_json()  # deterministic


def test_evolve_adds_few_new_skills_only_for_weak_types(episodes) -> None:
    eps = episodes["lookup"]
    bank = distill([e for e in eps if e.success])  # plans only: every lesson is new
    before = bank.to_json()
    rates = success_rates(eps)
    weak = {t for t, r in rates.items() if r < 0.4}
    assert weak and weak != set(rates)
    new_bank, added = evolve(bank, eps, rates, max_new_skills=2)
    assert bank.to_json() == before  # the input bank is unchanged
    assert added and {s.task_type for s in added} <= weak
    for t in weak:
        assert len([s for s in added if s.task_type == t]) <= 2
    assert [s.skill_id for s in added] == [f"dyn_{i:03d}" for i in range(1, len(added) + 1)]
    for t in new_bank.task_types:
        principles = [" ".join(s.principle.split()).casefold() for s in new_bank.visible(t)]
        assert len(principles) == len(set(principles))
    _, more = evolve(new_bank, eps, rates, max_new_skills=2)
    assert {(s.task_type, s.principle) for s in more}.isdisjoint({(s.task_type, s.principle) for s in added})
    assert [s.skill_id for s in more] == [f"dyn_{i:03d}" for i in range(len(added) + 1, len(added) + len(more) + 1)]
    assert evolve(new_bank, eps, {t: 1.0 for t in rates})[1] == []
    assert evolve(bank, eps, rates, max_new_skills=0)[1] == []


def test_evolve_cuts_failures_to_their_last_steps_and_few_examples() -> None:
    seen: list[list[Episode]] = []

    def spy(eps: Sequence[Episode]) -> list[Skill]:
        seen.append(list(eps))
        return [Skill("x", "T", f"P{len(seen)}.", "w", "mistake", eps[0].task_type)]

    failed = [calc([f"add(a={i}, b=1)"] * 8, ["1"] * 8, False) for i in range(7)]
    bank, added = evolve(SkillBank(), failed, {"calculator:sub+mul": 0.0}, summariser=spy, last_steps=3, max_examples=4)
    assert len(seen) == 1 and len(seen[0]) == 4 and all(len(e.actions) == 3 and e.skipped == 5 for e in seen[0])
    assert [s.skill_id for s in added] == ["dyn_001"] and len(bank) == 1
    with pytest.raises(ValueError, match="success rate"):
        evolve(bank, failed, {"calculator:sub+mul": 1.5})


# ------------------------------------------------------------------------------------------ the wrapper
def test_skill_prompt_prepends_exactly_the_rendered_block(episodes) -> None:
    bank = distill(episodes["calculator"])
    env = SkillPrompt(CalculatorEnv(depth=3), bank, top_k=2)
    plain = CalculatorEnv(depth=3)
    for i in range(6):
        obs, info = env.reset(seed=i, options={"task": i})
        raw, raw_info = plain.reset(seed=i, options={"task": i})
        skills = bank.retrieve(task_type(raw), top_k=2)
        assert obs == (render(skills) + SEPARATOR + raw if skills else raw)
        assert info["skills"] == [s.skill_id for s in skills] and info["task_type"] == task_type(raw)
        assert info["state_key"] == raw_info["state_key"]
        action = raw_info["expert"][0]
        assert env.step(action)[:4] == plain.step(action)[:4]
    env.bank = SkillBank()  # swapped between episodes
    obs, info = env.reset(options={"task": 0})
    assert obs == plain.reset(options={"task": 0})[0] and info["skills"] == []
    with pytest.raises(TypeError, match="must be a SkillBank"):
        env.bank = {}  # type: ignore[assignment]


def test_skill_prompt_runs_in_the_rollout_engine(episodes) -> None:
    bank = distill(episodes["lookup"])
    factory = env_factory("lookup", depth=2)
    batch = rollout_chains(lambda: SkillPrompt(factory(), bank), OraclePolicy(seed=0), range(3), group_size=2)
    plain = rollout_chains(factory, OraclePolicy(seed=0), range(3), group_size=2)
    prompts = batch.rollouts.texts.prompt.to_pylist()
    assert all(p.startswith(HEADER) for p in prompts)
    assert batch.success_rate == 1.0
    assert [e.prompt for e in episodes_from_batch(batch)] == plain.rollouts.texts.prompt.to_pylist()
