"""The action parser: compact syntax, OpenAI tool calls, and malformed input that never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepcredit.envs.actions import MAX_ACTION_CHARS, MAX_CALLS, ToolCall, call_spans, format_call, parse_action


def test_compact_call_with_every_value_kind() -> None:
    p = parse_action('  lookup(user=ann, n=-12, x=2.5, city="New York", code=FL-102)  ')
    assert p.error is None and p.answer is None
    assert p.calls == (ToolCall("lookup", {"user": "ann", "n": -12, "x": 2.5, "city": "New York", "code": "FL-102"}),)


def test_several_calls_and_no_arguments() -> None:
    p = parse_action('add(a=1, b=2); ping(); echo(t="a;b")')
    assert [c.name for c in p.calls] == ["add", "ping", "echo"]
    assert p.calls[2].arguments == {"t": "a;b"}


def test_answer() -> None:
    assert parse_action("answer 42").answer == "42"
    assert parse_action("answer  the total is 7 ").answer == "the total is 7"
    assert parse_action("answer").malformed


def test_openai_message_dict_and_text() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
            {"type": "function", "function": {"name": "mul", "arguments": {"a": 3, "b": 4}}},
        ],
    }
    expected = (ToolCall("add", {"a": 1, "b": 2}), ToolCall("mul", {"a": 3, "b": 4}))
    assert parse_action(message).calls == expected
    assert parse_action(json.dumps(message)).calls == expected
    assert parse_action({"role": "assistant", "content": "42"}).answer == "42"


@pytest.mark.parametrize(
    ("action", "why"),
    [
        ("", "empty"),
        ("add(a=1", "unbalanced"),
        ("add(a=1, a=2)", "twice"),
        ("add(1, 2)", "arg=value"),
        ("add(a=[1])", "cannot read"),
        ("add(a=1)\nmul(b=2)", "one line"),
        ("{not json", "not valid JSON"),
        ('{"tool_calls": [{"function": {"name": "x y"}}]}', "a tool call must be"),
        ('{"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}', "JSON object"),
        ('{"tool_calls": [{"function": {"name": "f", "arguments": "{\\"a\\": true}"}}]}', "number or a string"),
        ('{"content": ""}', "needs tool_calls"),
        ("x" * (MAX_ACTION_CHARS + 1), "longer than"),
        (";".join(["f()"] * (MAX_CALLS + 1)), "at most"),
    ],
)
def test_malformed_actions_say_why(action: str, why: str) -> None:
    p = parse_action(action)
    assert p.malformed and p.calls == () and p.answer is None
    assert why in str(p.error)


def test_non_text_actions_are_malformed_not_errors() -> None:
    for action in (None, 3, 2.5, ["add(a=1)"], b"answer 1", object()):
        assert parse_action(action).malformed
    deep = '{"tool_calls":' + "[" * 2000 + "]" * 2000 + "}"  # nested past the JSON decoder's recursion limit
    assert len(deep) <= MAX_ACTION_CHARS
    assert parse_action(deep).malformed


def test_format_call_round_trips() -> None:
    args = {"user": "ann", "n": 3, "x": 1.5, "city": "New York", "id": "17"}
    assert parse_action(format_call("f", args)).calls == (ToolCall("f", args),)


def test_call_spans_locate_each_call() -> None:
    text = ' add(a=1, b=2) ;  mul(a="x;y", b=3)'
    assert [text[a:b] for a, b in call_spans(text) or []] == ["add(a=1, b=2)", 'mul(a="x;y", b=3)']
    assert call_spans("answer 3") is None
    assert call_spans("add(a=") is None


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), st.text(alphabet="add(a=1,b);\"{}[]: \\answer-.", max_size=80)))
def test_any_text_parses_without_raising(text: str) -> None:
    p = parse_action(text)
    assert (p.error is not None) + (p.answer is not None) + bool(p.calls) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_message_parses_without_raising(value: object) -> None:
    for action in (value, {"tool_calls": value}, {"tool_calls": [{"function": value}]}):
        p = parse_action(action)
        assert (p.error is not None) + (p.answer is not None) + bool(p.calls) == 1
