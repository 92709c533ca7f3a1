"""Hostile and odd input to the loaders: each gives one RolloutError naming where and what, or the
right value; nothing crashes, hangs or turns into a silently wrong number."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stepcredit import RolloutError, load
from stepcredit.core import TOOL_ERROR, TOOL_OK
from stepcredit.envs import make_rollouts
from stepcredit.io import parse_record, parse_tau2, write_parquet

from .test_io_chat import CALL, record


def jsonl(tmp_path: Path, *lines: str | bytes, name: str = "log.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return p


def fails(path_or_fn, field: str | None = None, fragment: str = "") -> RolloutError:
    with pytest.raises(RolloutError) as info:
        path_or_fn() if callable(path_or_fn) else load(path_or_fn)
    err = info.value
    assert fragment in str(err), str(err)
    if field is not None:
        assert err.field == field, str(err)
    assert len(str(err)) < 600 and "\n" not in str(err)  # one bounded line
    return err


# ------------------------------------------------------------------------------ numbers out of range
def test_reward_with_hundreds_of_digits(tmp_path):
    p = jsonl(tmp_path, json.dumps(record(reward=10**400)))
    err = fails(p, "reward", "finite")
    assert err.source.endswith("log.jsonl:1") and err.trajectory == "t1"


def test_integer_past_the_parse_limit(tmp_path):
    p = jsonl(tmp_path, '{"id": "t1", "group": "g", "reward": ' + "9" * 5000 + ', "messages": []}')
    fails(p, None, "log.jsonl:1")


def test_outcome_beyond_float32(tmp_path):
    err = fails(jsonl(tmp_path, json.dumps(record(reward=1e39))), "outcome", "float32")
    assert err.source is not None and err.source.endswith(":1") and err.trajectory == "t1"


def test_state_key_beyond_int64(tmp_path):
    msgs = [{"role": "assistant", "content": "x", "state": 2**64}]
    fails(jsonl(tmp_path, json.dumps(record(messages=msgs))), "messages[0].state", "64-bit")


# --------------------------------------------------------------------------------------- deep nesting
def test_deeply_nested_record(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    fails(jsonl(tmp_path, '{"id": "t", "group": "g", "reward": 1, "messages": ' + deep + "}"), None, "nested")
    fails(jsonl(tmp_path, deep, name="b.jsonl"), None, "nested")
    (tmp_path / "c.json").write_text(deep)
    fails(tmp_path / "c.json", None, "nested")


def test_arguments_string_nested_thousands_deep(tmp_path):
    call = {"id": "c1", "function": {"name": "f", "arguments": "[" * 50_000 + "]" * 50_000}}
    msgs = [{"role": "assistant", "content": "x", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1"}]
    fails(jsonl(tmp_path, json.dumps(record(messages=msgs))), "messages[0].tool_calls[0].arguments", "nested")


def test_error_messages_never_format_whole_values(tmp_path):
    wide = list(range(300_000))  # a value whose repr is megabytes
    err = fails(jsonl(tmp_path, json.dumps(record(reward=wide))), "reward", "expected a number")
    assert len(str(err)) < 300


def test_records_built_in_python_nest_deeper_than_json():
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    msgs = [{"role": "tool", "tool_call_id": deep}]
    fails(lambda: parse_record(record(messages=msgs), "x:1"), None, "")
    fails(lambda: parse_record(record(messages=[{"role": "assistant", "content": "x", "kind": deep}]), "x:1"))


@pytest.mark.parametrize("where", ["call", "result"])
def test_call_ids_with_thousands_of_digits(where):
    huge = 10**5000
    call = {"id": huge if where == "call" else "c1", "function": {"name": "f", "arguments": "{}"}}
    msgs = [
        {"role": "assistant", "content": "x", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": huge if where == "result" else "c1", "content": "ok"},
    ]
    fails(lambda: parse_record(record(messages=msgs), "x:1"), None, "call id")


def test_arguments_dict_with_an_integer_of_thousands_of_digits():
    call = {"id": "c1", "function": {"name": "f", "arguments": {"n": 10**5000}}}
    msgs = [{"role": "assistant", "content": "x", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1"}]
    fails(lambda: parse_record(record(messages=msgs), "x:1"), "messages[0].tool_calls[0].arguments")


# --------------------------------------------------------------------------------- wrong JSON types
@pytest.mark.parametrize("value", ["search", {"id": "c1"}, 7])
def test_tool_calls_that_are_not_a_list(value):
    msgs = [{"role": "assistant", "content": "x", "tool_calls": value}]
    fails(lambda: parse_record(record(messages=msgs), "x:1"), "messages[0].tool_calls", "expected a list")


def tau2(tasks, sims=None):
    sim = {"id": "s1", "task_id": "7", "reward_info": {"reward": 1.0}, "messages": record()["messages"]}
    return {"tasks": tasks, "simulations": sims if sims is not None else [sim]}


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({"id": "7", "evaluation_criteria": ["x"]}, "evaluation_criteria"),
        ({"id": "7", "evaluation_criteria": {"actions": {"name": "f"}}}, "evaluation_criteria.actions"),
        ({"id": "7", "evaluation_criteria": {"actions": ["book"]}}, "evaluation_criteria.actions[0]"),
        ({"id": "7", "evaluation_criteria": {"actions": [{"name": "f", "arguments": 3}]}},
         "evaluation_criteria.actions[0].arguments"),
        ({"id": "7", "evaluation_criteria": {"actions": [{"name": "f", "arguments": {}, "compare_args": 5}]}},
         "evaluation_criteria.actions[0].compare_args"),
    ],
)  # fmt: skip
def test_tau2_reference_actions_of_the_wrong_type(task, field):
    err = fails(lambda: parse_tau2(tau2([task]), "r.json"), field)
    assert err.group == "7"


def test_tau2_simulations_and_tasks_of_the_wrong_type():
    fails(lambda: parse_tau2(tau2([{"id": "7"}], sims=["x"]), "r.json"), "record", "expected a JSON object")
    fails(lambda: parse_tau2({"tasks": "x", "simulations": []}, "r.json"), "tasks")


# ---------------------------------------------------------------------------------- text encodings
def test_jsonl_that_is_not_utf8(tmp_path):
    p = jsonl(tmp_path, json.dumps(record()), b'{"id": "t2", "group": "\xff\xfe", "reward": 1, "messages": []}')
    err = fails(p, None, "UTF-8")
    assert err.source.endswith("log.jsonl:2")


def test_json_that_is_not_utf8(tmp_path):
    (tmp_path / "r.json").write_bytes(b'[{"id": "\xff"}]')
    fails(tmp_path / "r.json", None, "UTF-8")


def test_lone_surrogates(tmp_path):
    msgs = [{"role": "assistant", "content": "\ud800 broken"}]
    p = jsonl(tmp_path, json.dumps(record(messages=msgs)))  # json.dumps writes it as the escape \ud800
    err = fails(p, "messages[0].content", "surrogate")
    assert err.trajectory == "t1"
    fails(jsonl(tmp_path, json.dumps(record(id="\udc00")), name="b.jsonl"), "id", "surrogate")


# --------------------------------------------------------------------------------- silently wrong
@pytest.mark.parametrize(
    ("flag", "ok"),
    [("false", TOOL_OK), ("False", TOOL_OK), ("true", TOOL_ERROR), ("", TOOL_OK), ("timeout", TOOL_ERROR)],
)
def test_error_flag_strings(flag, ok):
    msgs = [{"role": "assistant", "content": "x", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "r", "is_error": flag}]  # fmt: skip
    assert parse_record(record(messages=msgs), "x:1").steps[0].calls[0].ok == ok


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_confidence_outside_the_unit_interval(tmp_path, value):
    fails(jsonl(tmp_path, json.dumps(record(confidence=value))), "confidence", "<= 1" if value > 1 else ">= 0")


# ------------------------------------------------------------------------------------------ Parquet
@pytest.fixture
def table(tmp_path):
    r = make_rollouts(3, 2, seed=0)
    write_parquet(r, tmp_path / "ok.parquet")
    return pq.read_table(tmp_path / "ok.parquet")


def _write(tmp_path, table, name="bad.parquet") -> Path:
    pq.write_table(table, tmp_path / name)
    return tmp_path / name


def test_parquet_steps_column_that_is_not_a_list(tmp_path, table):
    bad = table.set_column(table.column_names.index("steps"), "steps", pa.array(["x"] * table.num_rows))
    fails(_write(tmp_path, bad), "steps", "list")


def test_parquet_string_numbers(tmp_path, table):
    bad = table.set_column(table.column_names.index("outcome"), "outcome", pa.array(["1.0"] * table.num_rows))
    fails(_write(tmp_path, bad), "outcome", "numbers")


def _replace_step_field(table, name, values):
    steps = table.column("steps").combine_chunks()
    structs = steps.flatten()
    fields = {f.name: structs.field(f.name) for f in structs.type}
    fields[name] = values(len(structs))
    new = pa.StructArray.from_arrays(list(fields.values()), names=list(fields))
    lists = pa.LargeListArray.from_arrays(steps.offsets, new)
    return table.set_column(table.column_names.index("steps"), "steps", lists)


def test_parquet_float_state_is_not_truncated(tmp_path, table):
    bad = _replace_step_field(table, "state", lambda n: pa.array([0.5] * n))
    fails(_write(tmp_path, bad), "state", "integer")


@pytest.mark.parametrize(
    "values", [lambda n: pa.array([2**64 - 1] * n, type=pa.uint64()), lambda n: pa.array([1e30] * n)]
)
def test_parquet_state_keys_beyond_int64(tmp_path, table, values):
    fails(_write(tmp_path, _replace_step_field(table, "state", values)), "state", "fit torch.int64")


def test_parquet_kind_that_would_wrap(tmp_path, table):
    fails(_write(tmp_path, _replace_step_field(table, "kind", lambda n: pa.array([257] * n))), "kind", "fit torch.int8")


def test_parquet_null_group(tmp_path, table):
    groups = pa.array([None, *table.column("group").to_pylist()[1:]], type=pa.large_string())
    bad = table.set_column(table.column_names.index("group"), "group", groups)
    fails(_write(tmp_path, bad), "group", "null")


def test_parquet_metadata_cannot_set_allocation_sizes(tmp_path):
    import torch

    from stepcredit import from_trainer_tensors

    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]])
    r = from_trainer_tensors(mask, ["a", "a"], outcome=torch.tensor([1.0, 0.0]))
    write_parquet(r, tmp_path / "t.parquet")
    t = pq.read_table(tmp_path / "t.parquet")
    meta = dict(t.schema.metadata)
    meta[b"stepcredit.response_length"] = b"10000000000"
    fails(_write(tmp_path, t.replace_schema_metadata(meta), "huge.parquet"), "response_length", "token mask")
    meta[b"stepcredit.response_length"] = b"2"  # shorter than the spans in the data
    fails(_write(tmp_path, t.replace_schema_metadata(meta), "short.parquet"), "response_length", "spans")
    meta[b"stepcredit.response_length"] = b"abc"
    fails(_write(tmp_path, t.replace_schema_metadata(meta), "nan.parquet"), "response_length", "integer")
