"""Chat-format loading: features and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepcredit import RolloutError, StepKind
from stepcredit.core import build
from stepcredit.io import ChatFields, load, parse_record

CALL = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x", "a": 1}'}}


def record(**overrides):
    rec = {
        "id": "t1",
        "group": "g1",
        "reward": 1.0,
        "messages": [
            {"role": "system", "content": "policy"},
            {"role": "user", "content": "please search"},
            {"role": "assistant", "content": "Searching.", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
            {"role": "assistant", "content": "Here you go."},
        ],
    }
    rec.update(overrides)
    return rec


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_basic_record():
    rec = parse_record(record(), "x:1")
    assert rec.prompt == "policy\nplease search"
    assert [s.action for s in rec.steps] == ["Searching.", "Here you go."]
    call = rec.steps[0].calls[0]
    assert (call.name, call.arguments, call.result, call.ok) == ("search", '{"a":1,"q":"x"}', "found", 1)


def test_parallel_calls_repeated_ids_and_out_of_order_results(tmp_path):
    calls = [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": '{"x": 2}'}},
    ]
    msgs = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "b", "content": "Error: bad x"},
        {"role": "tool", "tool_call_id": "a", "content": "fine"},
        {
            "role": "assistant",
            "content": "again",
            "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "a", "content": "fine again", "error": False},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "bye"},
    ]
    r = load(write_jsonl(tmp_path / "p.jsonl", [record(messages=msgs)]))
    assert r.call_offsets.tolist() == [0, 2, 3, 3]
    assert r.texts.call_result.to_pylist() == ["fine", "Error: bad x", "fine again"]
    assert r.call_ok.tolist() == [1, 0, 1]
    assert r.tool_ok.tolist() == [0, 1, -1]
    assert r.kind.tolist() == [StepKind.TOOL_CALL, StepKind.TOOL_CALL, StepKind.ANSWER]
    assert r.texts.observation.to_pylist() == ["", "thanks", ""]


def test_error_flags_and_unknown():
    msgs = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "1", "name": "f", "arguments": {"k": 1}},
                {"id": "2", "name": "f", "arguments": {"k": 2}},
                {"id": "3", "name": "f", "arguments": {"k": 3}},
            ],
        },
        {"role": "tool", "id": "1", "content": "Error: looks bad", "error": False},  # explicit field wins
        {"role": "tool", "id": "2", "content": "ok", "is_error": True},
        {"role": "tool", "id": "3", "content": "?", "error": None},
    ]
    rec = parse_record(record(messages=msgs), "x")
    assert [c.ok for c in rec.steps[0].calls] == [1, 0, -1]


def test_configurable_and_dotted_fields(tmp_path):
    rec = {"task_id": 7, "traj": record()["messages"], "meta": {"score": 0}, "uid": "u"}
    fields = ChatFields(id="uid", group="task_id", reward="meta.score", messages="traj")
    r = load(write_jsonl(tmp_path / "x.jsonl", [rec]), fields=fields)
    assert r.texts.group_names.to_pylist() == ["7"] and r.outcome.tolist() == [0.0]


def test_json_list_file_and_folder_merge_groups(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([record(id="1"), record(id="2", group="g2")]))
    write_jsonl(tmp_path / "b.jsonl", [record(id="3", group="g2", reward=0)])
    r = load(tmp_path)
    assert r.num_trajectories == 3 and r.num_groups == 2
    assert r.group.tolist() == [0, 1, 1]


def test_step_fields_and_content_parts():
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "a", "reward": 0.5, "label": 1, "state": 42, "kind": "reason"},
        {"role": "assistant", "content": "b"},
    ]
    rec = parse_record(record(messages=msgs), "x")
    assert rec.prompt == "hi there"
    assert (rec.steps[0].reward, rec.steps[0].label, rec.steps[0].state) == (0.5, 1, 42)
    r = build([rec])
    assert r.state[0] == 42 and r.label.tolist() == [1, 0]


def test_history_states_share_first_step_and_identical_prefixes():
    a = parse_record(record(id="a"), "x")
    b = parse_record(record(id="b", reward=0), "x")
    c = parse_record(record(id="c", group="other"), "x")
    r = build([a, b, c])
    st = r.state.tolist()
    assert st[0] == st[2]  # same group, same (empty) history
    assert st[1] == st[3]  # same call history
    assert st[0] != st[1]
    assert st[4] != st[0]  # another group never shares a key
    assert build([a, b, c]).state.tolist() == st  # stable
    assert build([a, b], states="distinct").state.unique().numel() == 4


def test_reward_bool_is_accepted():
    assert parse_record(record(reward=True), "x").outcome == 1.0


def bad_messages(*msgs):
    return record(messages=list(msgs))


MALFORMED = [
    ("not an object", [1, 2], "record", "expected a JSON object"),
    ("missing group", {k: v for k, v in record().items() if k != "group"}, "group", "missing group"),
    ("missing reward", {k: v for k, v in record().items() if k != "reward"}, "reward", "missing outcome"),
    ("missing messages", {k: v for k, v in record().items() if k != "messages"}, "messages", "missing message"),
    ("NaN reward", record(reward=float("nan")), "reward", "finite"),
    ("inf reward", record(reward=float("inf")), "reward", "finite"),
    ("string reward", record(reward="1"), "reward", "expected a number"),
    ("null reward", record(reward=None), "reward", "expected a number"),
    ("list group", record(group=["a"]), "group", "expected a string"),
    ("messages not a list", record(messages={"role": "user"}), "messages", "expected a list"),
    ("empty messages", record(messages=[]), "messages", "empty"),
    ("message not an object", bad_messages("hello"), "messages[0]", "message object"),
    ("unknown role", bad_messages({"role": "robot", "content": "x"}), "messages[0].role", "unknown role"),
    ("no assistant", bad_messages({"role": "user", "content": "x"}), "messages", "no assistant"),
    (
        "tool result with no call",
        bad_messages({"role": "assistant", "content": "x"}, {"role": "tool", "tool_call_id": "zz", "content": "r"}),
        "messages[1].tool_call_id",
        "no earlier unanswered call",
    ),
    (
        "tool result twice",
        bad_messages(
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
        ),
        "messages[2].tool_call_id",
        "no earlier unanswered call",
    ),
    (
        "call with no result",
        bad_messages({"role": "assistant", "content": "", "tool_calls": [CALL]}),
        "messages",
        "has no tool result",
    ),
    (
        "tool message without id",
        bad_messages({"role": "assistant", "content": "", "tool_calls": [CALL]}, {"role": "tool", "content": "r"}),
        "messages[1].tool_call_id",
        "no tool_call_id",
    ),
    (
        "call without id",
        bad_messages(
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
        ),
        "messages[0].tool_calls[0].id",
        "call id",
    ),
    (
        "call without name",
        bad_messages(
            {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "function": {"arguments": "{}"}}]}
        ),
        "messages[0].tool_calls[0].name",
        "tool name",
    ),
    (
        "call arguments a number",
        bad_messages(
            {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": 3}}]}
        ),
        "messages[0].tool_calls[0].arguments",
        "JSON object",
    ),
    (
        "tool_calls not a list",
        bad_messages({"role": "assistant", "content": "", "tool_calls": {"id": 1}}),
        "messages[0].tool_calls",
        "expected a list",
    ),
    ("content a number", bad_messages({"role": "assistant", "content": 5}), "messages[0].content", "expected a string"),
    (
        "bad content part",
        bad_messages({"role": "assistant", "content": [{"image": 1}]}),
        "messages[0].content",
        "parts",
    ),
    ("bad step label", bad_messages({"role": "assistant", "content": "x", "label": 2}), "messages[0].label", "label"),
    (
        "bad step reward",
        bad_messages({"role": "assistant", "content": "x", "reward": float("nan")}),
        "messages[0].reward",
        "finite",
    ),
    ("bad state", bad_messages({"role": "assistant", "content": "x", "state": "s"}), "messages[0].state", "integer"),
    (
        "bad kind",
        bad_messages({"role": "assistant", "content": "x", "kind": "dance"}),
        "messages[0].kind",
        "expected one of",
    ),
    ("rubric not booleans", record(rubric=[1, 0]), "rubric", "list of booleans"),
    ("confidence a string", record(confidence="high"), "confidence", "expected a number"),
    ("bad prm", bad_messages({"role": "assistant", "content": "x", "prm": "good"}), "messages[0].prm", "number"),
    (
        "bad abandoned flag",
        bad_messages({"role": "assistant", "content": "x", "abandoned": 1}),
        "messages[0].abandoned",
        "boolean",
    ),
    (
        "error flag a number",
        bad_messages(
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "r", "error": 3},
        ),
        "messages[1].error",
        "boolean",
    ),
]


@pytest.mark.parametrize(("case", "obj", "field", "fragment"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_records(case, obj, field, fragment):
    with pytest.raises(RolloutError) as info:
        parse_record(obj, "log.jsonl:3")
    err = info.value
    assert err.field == field, case
    assert fragment in str(err)
    assert str(err).startswith("log.jsonl:3")


def test_error_names_the_trajectory_and_group():
    with pytest.raises(RolloutError) as info:
        parse_record(record(id="traj-9", group="task-4", reward=float("nan")), "f.jsonl:7")
    assert str(info.value) == (
        "f.jsonl:7, trajectory 'traj-9' (group 'task-4'), field 'reward': expected a finite number, got nan"
    )


def test_truncated_jsonl_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(record()) + "\n" + json.dumps(record(id="t2"))[:40] + "\n")
    with pytest.raises(RolloutError, match=r"t\.jsonl:2: invalid JSON"):
        load(p)


def test_truncated_json_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([record()])[:-10])
    with pytest.raises(RolloutError, match="invalid JSON"):
        load(p)


def test_duplicate_trajectory_ids_across_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [record(id="same")])
    write_jsonl(tmp_path / "b.jsonl", [record(id="same")])
    with pytest.raises(RolloutError, match="not unique"):
        load(tmp_path)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(RolloutError, match="no such file"):
        load(tmp_path / "nope.jsonl")
    with pytest.raises(RolloutError, match="no log files"):
        load(tmp_path)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(RolloutError, match="no trajectories"):
        load(tmp_path)


def test_malformed_arguments_string_is_kept_verbatim():
    msgs = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}],
        },
        {"role": "tool", "tool_call_id": "1", "content": "Error: bad JSON"},
    ]
    call = parse_record(record(messages=msgs), "x").steps[0].calls[0]
    assert call.arguments == "{oops" and call.ok == 0


def test_typed_non_text_part_is_a_placeholder():
    msgs = [
        {"role": "assistant", "content": [{"type": "text", "text": "see "}, {"type": "image_url", "image_url": {}}]}
    ]
    assert parse_record(record(messages=msgs), "x").steps[0].action == "see [image_url]"


def test_optional_columns_and_all_or_none_rules():
    a = parse_record(record(id="a", confidence=0.7, rubric=[True, False]), "x")
    b = parse_record(record(id="b", rubric=[False, False]), "x")
    r = build([a, b])
    assert r.confidence[0].item() == pytest.approx(0.7) and r.confidence[1].isnan()
    assert r.rubric.tolist() == [[True, False], [False, False]]
    c = parse_record(record(id="c"), "f.jsonl:3")
    with pytest.raises(RolloutError, match="has no rubric while others") as info:
        build([a, c])
    assert info.value.trajectory == "c" and info.value.field == "rubric"
    d = parse_record(record(id="d", rubric=[True]), "f.jsonl:4")
    with pytest.raises(RolloutError, match="expected 2 rubric values") as info:
        build([a, d])
    assert info.value.trajectory == "d" and info.value.field == "rubric"
    msgs = [{"role": "assistant", "content": "x", "prm": 0.9}, {"role": "assistant", "content": "y"}]
    with pytest.raises(RolloutError, match="step 1 has no prm while others") as info:
        build([parse_record(record(id="p", messages=msgs), "x")])
    assert info.value.field == "prm"
    msgs = [{"role": "assistant", "content": "x", "prm": 0.9, "abandoned": True}]
    r = build([parse_record(record(id="p", messages=msgs), "x")])
    assert r.prm.tolist() == pytest.approx([0.9]) and r.abandoned.tolist() == [True]


def test_derived_states_are_dense_unless_explicit_states_are_given():
    a = parse_record(record(id="a"), "x")
    b = parse_record(record(id="b", reward=0), "x")
    r = build([a, b])
    assert sorted(set(r.state.tolist())) == list(range(len(set(r.state.tolist()))))  # 0..K-1
    assert build([a, b], states="distinct").state.tolist() == [0, 1, 2, 3]
    msgs = [{"role": "assistant", "content": "x", "state": 0}, {"role": "assistant", "content": "y"}]
    c = parse_record(record(id="c", messages=msgs), "x")
    mixed = build([a, c], states="distinct")
    assert mixed.state[2] == 0 and 0 not in mixed.state[[0, 1, 3]].tolist()  # no accidental sharing
