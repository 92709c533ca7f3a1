"""Hypothesis strategies for the fuzz campaigns: near-valid inputs (valid ones, then mutated) and junk.

Every strategy returns a case whose ``data`` is exactly what a loader reads (file bytes) and whose
``describe()`` is a short, evaluable reproducer. JSON inputs are trees of plain values plus ``Raw``
pieces (JSON text written verbatim: ``1e400``, ``NaN``, ``"\\ud800"``, 5000-digit integers, brackets
100 000 deep), so the generated files can hold what ``json.dumps`` never writes.
"""

from __future__ import annotations

import copy
import json
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from stepcredit.io import ChatFields

# ------------------------------------------------------------------------------------------ reprs
_RUN = re.compile(rb"(.{1,8}?)\1{7,}", re.S)


def compact(data: bytes | str, limit: int = 1500) -> str:
    """An evaluable Python expression for ``data`` with repeated runs folded (``b'[' * 100000``) and,
    past ``limit`` characters, its middle elided (then it is only a description)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    parts, pos = [], 0
    for m in _RUN.finditer(raw):
        if m.start() > pos:
            parts.append(_lit(raw[pos : m.start()], data))
        unit = m.group(1)
        parts.append(f"{_lit(unit, data)} * {(m.end() - m.start()) // len(unit)}")
        pos = m.start() + ((m.end() - m.start()) // len(unit)) * len(unit)
    if pos < len(raw) or not parts:
        parts.append(_lit(raw[pos:], data))
    text = " + ".join(parts)
    if len(text) > limit:
        text = f"{text[: limit // 2]} <... {len(text) - limit} characters elided ...> {text[-limit // 2 :]}"
    return text


def _lit(chunk: bytes, like: bytes | str) -> str:
    return repr(chunk.decode("utf-8", "surrogatepass")) if isinstance(like, str) else repr(chunk)


# --------------------------------------------------------------------------------- JSON trees
_NOVALUE = object()


class Raw:
    """JSON text written as is; ``value`` is the Python object it stands for in a direct call (by
    default ``json.loads(text)``, or the text itself when that fails)."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str, value: Any = _NOVALUE) -> None:
        self.text, self._value = text, value

    def value(self) -> Any:
        if callable(self._value):
            return self._value()
        if self._value is not _NOVALUE:
            return self._value
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError):
            return self.text

    def __deepcopy__(self, memo: dict[int, Any]) -> Raw:
        return self

    def __repr__(self) -> str:
        return f"Raw({compact(self.text, 200)})"


def nested_list(depth: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(depth - 1):
        out = [out]
    return out


def nested_dict(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = {"a": out}
    return out


def deep(depth: int, kind: str = "[") -> Raw:
    if kind == "[":
        return Raw("[" * depth + "]" * depth, lambda: nested_list(depth))
    return Raw('{"a": ' * depth + "1" + "}" * depth, lambda: nested_dict(depth))


DEPTHS = (40, 900, 985, 995, 1000, 3000, 100_000)
RAWS = [
    Raw("1e400"),
    Raw("-1e400"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("-0"),
    Raw("1E-400"),
    Raw("3.5e38"),
    Raw('"\\ud800"'),
    Raw('"x\\udfff\\ud800y"'),
    Raw('"\\u0000"'),
    Raw('"\\u2028"'),
    Raw("9" * 4300),  # the longest integer json reads
    Raw("9" * 5000, lambda: 10**5000 - 1),  # RAWS[13], past the digit limit: json refuses it, Python holds it
    Raw("-" + "9" * 4301),
    Raw("[" * 100_000),  # unclosed
    Raw('"unterminated'),
    Raw("tru"),
    Raw("[1,]"),
    Raw("{}}"),
    *(deep(d) for d in DEPTHS),
    *(deep(d, "{") for d in (900, 990, 2000)),
]
LONG = "x" * 1200
SCALARS: list[Any] = [
    None, True, False, 0, 1, -1, 2, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400,
    0.0, -0.0, 0.5, 1.5, -1.5, 1e39, -1e39, 3.4e38, 1e-45, 5e-324, 1e308, math.nan, math.inf, -math.inf,
    "", "x", " ", "Error: boom", "true", "false", "1.0", "nan", "c1", "a:b", "\ud800", "a\udfffb", "\x00", "é💥",
    "\u2028", "line\nbreak", LONG, "assistant", "tool", "user", "system", "function", "reason", "answer", "tool_call",
    [], {}, [None], [True, False], ["x"], [1, 2], [[]], {"a": 1}, {"text": 1}, {"type": None}, {"type": "image"},
    {"id": "c1"}, {"name": "f"}, {"name": "f", "arguments": {}}, [{"role": "assistant", "content": "x"}],
]  # fmt: skip
KEYS = [
    "id", "group", "reward", "messages", "role", "content", "tool_calls", "tool_call_id", "function", "name",
    "arguments", "type", "error", "is_error", "state", "kind", "label", "prm", "abandoned", "tree", "confidence",
    "rubric", "task_id", "trial", "reward_info", "evaluation_criteria", "actions", "compare_args", "requestor",
    "simulations", "tasks", "text", "x", "", "\ud800",
]  # fmt: skip


NASTY: list[Any] = [LONG, "\ud800", 10**400, RAWS[13], math.nan, math.inf, 1e39, None, True, -1, 2**63, [], {}, "",
                    deep(985)]  # fmt: skip


def weird_values() -> st.SearchStrategy[Any]:
    small = st.sampled_from(SCALARS[:40])
    return st.one_of(
        st.sampled_from(NASTY),
        st.sampled_from(NASTY),
        st.sampled_from(SCALARS),
        st.sampled_from(RAWS),
        st.sampled_from(SCALARS),
        st.integers(),
        st.floats(),
        st.text(max_size=6),
        st.lists(small, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), small, max_size=2),
    )


Path_ = tuple[Any, ...]


def node_paths(tree: Any, prefix: Path_ = ()) -> list[Path_]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.extend(node_paths(v, (*prefix, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.extend(node_paths(v, (*prefix, i)))
    return out


def get_at(tree: Any, path: Path_) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def set_at(tree: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    get_at(tree, path[:-1])[path[-1]] = value
    return tree


def dump(obj: Any, ensure_ascii: bool = True) -> str:
    """JSON text of a tree (``Raw`` verbatim; NaN and infinities as json.dumps writes them)."""
    if isinstance(obj, Raw):
        return obj.text
    if isinstance(obj, dict):
        items = (json.dumps(str(k), ensure_ascii=ensure_ascii) + ": " + dump(v, ensure_ascii) for k, v in obj.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(dump(v, ensure_ascii) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=ensure_ascii)


def python_value(obj: Any) -> Any:
    """The tree as the Python object a direct call gets (``Raw`` pieces by their values)."""
    if isinstance(obj, Raw):
        return obj.value()
    if isinstance(obj, dict):
        return {k: python_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [python_value(v) for v in obj]
    return obj


OPS = ("replace", "replace", "replace", "replace", "delete", "add_key", "rename_key", "wrap_list", "wrap_dict",
       "stringify", "duplicate", "empty", "long", "deepen")  # fmt: skip
NEW_KEYS = [LONG, "\ud800", "", "x", "id", "name", "1"]


def deepened(node: Any, depth: int) -> Raw:
    """``node`` at the bottom of ``depth`` nested lists."""
    text = "[" * depth + dump(node) + "]" * depth

    def value() -> Any:
        out = python_value(node)
        for _ in range(depth):
            out = [out]
        return out

    return Raw(text, value)


@st.composite
def mutated(draw: Any, tree: Any, focus: Sequence[Path_] = ((),), max_ops: int = 3) -> Any:
    """``tree`` after 0..max_ops mutations, each at a node below one of the ``focus`` paths."""
    tree = copy.deepcopy(tree)
    for _ in range(max(0, draw(st.integers(-1, max_ops)))):
        prefix = draw(st.sampled_from(list(focus)))
        paths = [p for p in node_paths(tree) if p[: len(prefix)] == prefix] or node_paths(tree)
        path = draw(st.sampled_from(paths))
        node = get_at(tree, path)
        op = draw(st.sampled_from(OPS))
        if op == "replace":
            tree = set_at(tree, path, copy.deepcopy(draw(weird_values())))
        elif op == "delete" and path:
            parent = get_at(tree, path[:-1])
            del parent[path[-1]]
        elif op == "add_key" and isinstance(node, dict):
            node[draw(st.sampled_from(KEYS))] = copy.deepcopy(draw(weird_values()))
        elif op == "rename_key" and path and isinstance(get_at(tree, path[:-1]), dict):
            parent, new = get_at(tree, path[:-1]), draw(st.sampled_from(NEW_KEYS))
            items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
        elif op == "long":
            tree = set_at(tree, path, node + LONG if isinstance(node, str) else LONG)
        elif op == "deepen":
            tree = set_at(tree, path, deepened(node, draw(st.sampled_from([960, 975, 985, 995, 3000]))))
        elif op == "wrap_list":
            tree = set_at(tree, path, [node])
        elif op == "wrap_dict":
            tree = set_at(tree, path, {draw(st.sampled_from(KEYS)): node})
        elif op == "stringify":
            tree = set_at(tree, path, dump(node))
        elif op == "duplicate" and isinstance(node, list) and node:
            node.append(copy.deepcopy(node[draw(st.integers(0, len(node) - 1))]))
        elif op == "empty":
            tree = set_at(tree, path, type(node)() if isinstance(node, list | dict | str) else None)
    return tree


# ------------------------------------------------------------------------------ file bytes
SNIPPETS = [b"\xff", b"\xc3", b"\x80", b"\x00", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r\n", b"\n", b'"', b"\\",
            b"\\u", b'"\\ud800"', b"{", b"}", b"[", b"]", b",", b":", b"NaN", b"1e999", b"\x1b[2J"]  # fmt: skip


@st.composite
def damaged(draw: Any, data: bytes) -> bytes:
    """``data``, mostly intact; else truncated, with bytes replaced or inserted, or random bytes."""
    roll = draw(st.integers(0, 19))
    if roll == 19:
        return draw(st.binary(min_size=1, max_size=64))
    if roll < 14:
        return data
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(("truncate", "replace", "insert", "bom")))
        pos = draw(st.integers(0, len(data)))
        if op == "truncate":
            data = data[:pos]
        elif op == "replace":
            data = data[:pos] + draw(st.sampled_from(SNIPPETS)) + data[pos + 1 :]
        elif op == "insert":
            data = data[:pos] + draw(st.sampled_from(SNIPPETS)) + data[pos:]
        else:
            data = b"\xef\xbb\xbf" + data
    return data


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate written raw: not UTF-8


@dataclass
class JsonCase:
    """A JSON or JSONL file (``data``) and the trees it was written from (direct calls get those)."""

    suffix: str
    data: bytes
    trees: list[Any]
    options: dict[str, Any] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.data)

    def describe(self) -> dict[str, Any]:
        return {**self.options, "suffix": self.suffix, "file": compact(self.data)}


@st.composite
def json_file(draw: Any, trees: list[Any], jsonl: bool, single: bool = False) -> bytes:
    """The file for ``trees``: JSONL (a line each, blank or junk lines between) or one JSON document."""
    ensure_ascii = draw(st.booleans())
    texts = [dump(t, ensure_ascii) for t in trees]
    if jsonl:
        lines = list(texts)
        if draw(st.integers(0, 4)) == 0:
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "   ", "null", "[]", "{", "#"])))
        text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))
    elif single or (len(texts) == 1 and draw(st.booleans())):
        text = texts[0]
    else:
        text = "[" + ", ".join(texts) + "]"
    return draw(damaged(encode(text)))


# ------------------------------------------------------------------------------- chat records
FIELD_SETS = {
    "default": ChatFields(),
    "tau2-like": ChatFields(id="task_id,trial", group="task_id", reward="reward_info.reward"),
    "renamed": ChatFields(
        id="meta.id",
        group="meta.task",
        reward="score",
        messages="turns",
        step_reward="r",
        renames={"confidence": "meta.conf", "state": "s", "label": "lab"},
    ),
}
TOOLS = ["search", "book_reservation", "cancel_reservation", "get_user_details", "transfer_to_human_agents"]
ARGS: list[dict[str, Any]] = [
    {}, {"q": "x"}, {"reservation_id": "A1"}, {"user_id": "u", "x": 1}, {"a": [1, {"b": None}]},
]  # fmt: skip


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[last] = value


def contents() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.text(max_size=8),
        st.sampled_from(["Done.", "Error: not found", "<confidence>0.7</confidence> yes", "<answer>4</answer>"]),
        st.just([{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "x"}}, "raw"]),
    )


numbers = st.one_of(st.sampled_from([0, 1, 0.0, 1.0, 0.5, -1.0]), st.floats(-10, 10, allow_nan=False))


@st.composite
def chat_record(draw: Any, fields: ChatFields, tau2: bool = False, rid: Any = "t1", prm: bool = False,
                rubric: bool = False) -> dict[str, Any]:  # fmt: skip
    """A valid chat record (OpenAI or tau2 call shapes, optional annotations) for ``fields``; ``prm``
    and ``rubric``: columns every record of a batch has or none has."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": "policy"})
    if draw(st.integers(0, 3)):
        messages.append({"role": "user", "content": draw(contents())})
    if tau2 and draw(st.integers(0, 3)) == 0:  # a call the user side makes, answered to the user
        user_call = {"id": "u1", "name": "toggle_data", "arguments": {}, "requestor": "user"}
        messages.append({"role": "user", "content": "done", "tool_calls": [user_call]})
        messages.append({"role": "tool", "id": "u1", "content": "ok", "requestor": "user", "error": False})
    n_steps = draw(st.integers(1, 3))
    for s in range(n_steps):
        calls = []
        for k in range(draw(st.integers(0, 2))):
            cid = draw(st.sampled_from([f"c{s}_{k}", f"c{s}_{k}", "c1", 7]))
            name, args = draw(st.sampled_from(TOOLS)), copy.deepcopy(draw(st.sampled_from(ARGS)))
            if tau2 or draw(st.booleans()):
                call: dict[str, Any] = {"id": cid, "name": name, "arguments": args, "requestor": "assistant"}
            else:
                call = {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            if draw(st.integers(0, 3)) == 0:
                call["label"] = draw(st.sampled_from([-1, 0, 1]))
            calls.append(call)
        msg: dict[str, Any] = {"role": "assistant", "content": draw(contents())}
        if calls or draw(st.booleans()):
            msg["tool_calls"] = calls or None
        kind = "tool_call" if calls else draw(st.sampled_from(["reason", "answer"] if s < n_steps - 1 else ["answer"]))
        for name, values in (
            (fields.step_reward, numbers),
            (fields.renames.get("state", "state"), st.integers(-5, 5)),
            ("kind", st.sampled_from([kind, kind.upper()])),
            (fields.renames.get("label", "label"), st.sampled_from([-1, 0, 1, None])),
            ("abandoned", st.booleans()),
        ):
            if draw(st.integers(0, 4)) == 0:
                set_path(msg, name, draw(values))
        if prm:
            msg["prm"] = draw(numbers)
        messages.append(msg)
        order = list(calls)
        if draw(st.booleans()):
            order.reverse()
        for call in order:
            tool: dict[str, Any] = {"role": draw(st.sampled_from(["tool", "tool", "function"]))}
            tool["tool_call_id" if not tau2 and draw(st.booleans()) else "id"] = call["id"]
            tool["content"] = draw(contents())
            if draw(st.booleans()):
                flag = draw(st.sampled_from([True, False, None, "false", "timeout", "", "0"]))
                tool[draw(st.sampled_from(["error", "is_error"]))] = flag
            if tau2:
                tool["requestor"] = "assistant"
            messages.append(tool)
        if draw(st.integers(0, 3)) == 0:
            messages.append({"role": "user", "content": "thanks"})
    rec: dict[str, Any] = {}
    for part in (p.strip() for p in fields.id.split(",")):
        set_path(rec, part, rid)
    set_path(rec, fields.group, draw(st.sampled_from(["g1", "g2", 7, "7"])))
    set_path(rec, fields.reward, draw(numbers))
    set_path(rec, fields.messages, messages)
    if rubric:
        set_path(rec, "rubric", draw(st.lists(st.booleans(), min_size=2, max_size=2)))
    for name, values in (
        ("tree", st.sampled_from(["t0", 1, "x"])),
        ("confidence", st.one_of(st.none(), st.floats(0, 1))),
    ):
        if draw(st.integers(0, 3)) == 0:
            set_path(rec, fields.renames.get(name, name), draw(values))
    return rec


@st.composite
def chat_cases(draw: Any) -> JsonCase:
    fields_name = draw(st.sampled_from(sorted(FIELD_SETS)))
    fields = FIELD_SETS[fields_name]
    if draw(st.integers(0, 29)) == 0:  # a whole file of brackets
        depth = draw(st.sampled_from(DEPTHS))
        return JsonCase(".jsonl", encode(deep(depth).text), [], {"fields": fields_name})
    n = draw(st.integers(1, 3))
    prm, rubric = draw(st.integers(0, 4)) == 0, draw(st.integers(0, 4)) == 0
    trees = [draw(chat_record(fields, rid=draw(st.sampled_from([f"t{i}"] * 6 + [i, "t0"])), prm=prm, rubric=rubric))
             for i in range(n)]  # fmt: skip
    target = draw(st.integers(0, n - 1))  # one record is mutated, the others stay valid
    trees[target] = draw(mutated(trees[target]))
    suffix = draw(st.sampled_from([".jsonl", ".jsonl", ".json"]))
    data = draw(json_file(trees, jsonl=suffix == ".jsonl"))
    return JsonCase(suffix, data, trees, {"fields": fields_name})


# ---------------------------------------------------------------------------------------- tau2
@st.composite
def reference_action(draw: Any) -> dict[str, Any]:
    args = copy.deepcopy(draw(st.sampled_from(ARGS)))
    action: dict[str, Any] = {
        "action_id": draw(st.sampled_from(["a0", "a1"])),
        "requestor": draw(st.sampled_from(["assistant", "assistant", "user"])),
        "name": draw(st.sampled_from(TOOLS)),
        "arguments": args,
    }
    if draw(st.booleans()):
        action["compare_args"] = draw(st.one_of(st.none(), st.just(sorted(args)), st.just(["q", "missing"])))
    return action


@st.composite
def tau2_object(draw: Any) -> dict[str, Any]:
    task_ids = draw(st.lists(st.sampled_from(["7", "8", 9]), min_size=1, max_size=2, unique=True))
    tasks = []
    for tid in task_ids:
        criteria = None
        if draw(st.integers(0, 4)):
            criteria = {
                "actions": draw(st.one_of(st.none(), st.lists(reference_action(), max_size=3))),
                "nl_assertions": ["Agent should refuse."],
                "reward_basis": ["DB"],
            }
        tasks.append({"id": tid, "description": {"purpose": "p"}, "evaluation_criteria": criteria})
    sims = []
    for i in range(draw(st.integers(1, 2))):
        sim = draw(chat_record(ChatFields(id="id", group="task_id", reward="reward_info.reward"), tau2=True))
        sim["id"], sim["task_id"], sim["trial"] = f"s{i}", draw(st.sampled_from([*task_ids, *task_ids, "unknown"])), i
        sims.append(sim)
    return {"timestamp": "2026-01-01T00:00:00", "info": {"num_trials": 1}, "tasks": tasks, "simulations": sims}


@st.composite
def tau2_cases(draw: Any) -> JsonCase:
    base = draw(tau2_object())
    focus = draw(st.sampled_from([(("tasks",),), (("tasks",),), (("simulations",),), ((),)]))
    tree = draw(mutated(base, focus))
    data = draw(json_file([tree], jsonl=False, single=True))
    options = {
        "labels": draw(st.booleans()),
        "id_field": draw(st.sampled_from(["id", "id", "task_id,trial", "missing"])),
        "format": draw(st.sampled_from(["auto", "tau2"])),
    }
    return JsonCase(".json", data, [tree], options)


# ---------------------------------------------------------------------------------- references
@st.composite
def reference_cases(draw: Any) -> JsonCase:
    groups = draw(st.lists(st.sampled_from(["g1", "g2", "7", "other"]), min_size=1, max_size=3, unique=True))
    refs = {g: draw(st.lists(reference_action(), max_size=3)) for g in groups}
    tree = draw(mutated(refs))
    data = draw(json_file([tree], jsonl=False, single=True))
    return JsonCase(".json", data, [tree])


# ------------------------------------------------------------------------------------- Parquet
TOP = ["id", "group", "outcome", "prompt", "steps", "tree", "confidence", "rubric"]
STEP = ["action", "observation", "kind", "reward", "tool_ok", "state", "label", "prm", "abandoned", "token_start",
        "token_end", "calls"]  # fmt: skip
CALL = ["name", "arguments", "result", "ok", "label", "token_start", "token_end"]
LEVEL_NAMES = {"top": TOP, "step": STEP, "call": CALL}
VALUE_KINDS = [
    "str_numbers", "float_frac", "float_int", "float_nan", "float_inf", "float64_big", "float64_1e19", "nulls_some",
    "nulls_all", "null_type", "bool", "int16_300", "int64_neg", "uint64_max", "int64_min", "int64_max", "list_int",
    "list_null", "struct", "dictionary", "binary", "string", "large_string_of", "empty_string", "invalid_utf8",
    "timestamp", "decimal", "float16", "long_string", "surrogate_text",
]  # fmt: skip
META_VALUES = [b"-1", b"0", b"1", b"4", b"3.0", b"1e3", b" 12", b"12 ", b"+5", b"0x10", b"1_000", b"abc", b"",
               b"\xff", b"\xd9\xa1\xd9\xa2", b"99999999999999999999999", b"9" * 5000, b"2147483648", b"50000000",
               b"100000000", b"268435456", b"357913941", None]  # fmt: skip


@dataclass
class ParquetCase:
    """A base table, the edits applied to it (in order) and the file edits after writing it."""

    base: str
    edits: list[tuple[Any, ...]]
    file_edits: list[tuple[Any, ...]]

    def size(self) -> int:
        return len(repr(self.edits)) + len(repr(self.file_edits))

    def describe(self) -> dict[str, Any]:
        edits, file_edits = compact(repr(self.edits), 800), compact(repr(self.file_edits), 600)
        return {"base": self.base, "edits": edits, "file_edits": file_edits}


@st.composite
def parquet_edit(draw: Any) -> tuple[Any, ...]:
    op = draw(st.sampled_from(["set", "set", "set", "drop", "rename", "lists", "meta", "rows", "chunks"]))
    level = draw(st.sampled_from(["top", "step", "call"]))
    name = draw(st.sampled_from(LEVEL_NAMES[level]))
    if op == "set":
        return ("set", level, name, draw(st.sampled_from(VALUE_KINDS)))
    if op == "drop":
        return ("drop", level, name)
    if op == "rename":
        return ("rename", level, name, draw(st.sampled_from(["x", *LEVEL_NAMES[level]])))
    if op == "lists":
        what = draw(st.sampled_from(["steps", "calls", "rubric"]))
        return ("lists", what, draw(st.sampled_from(["empty", "all_first", "list32", "fixed", "sliced", "nulls"])))
    if op == "meta":
        key = draw(st.sampled_from([b"stepcredit.response_length"] * 2 + [b"stepcredit.format"]))
        return ("meta", key, draw(st.sampled_from(META_VALUES)))
    if op == "rows":
        return ("rows", draw(st.sampled_from(["empty", "first", "double", "reverse"])))
    return ("chunks", draw(st.integers(2, 3)))


@st.composite
def parquet_file_edit(draw: Any) -> tuple[Any, ...]:
    op = draw(st.sampled_from(["truncate", "byte", "tail_byte", "random", "magic"]))
    if op == "truncate":
        return ("truncate", draw(st.integers(0, 999)))  # at this many per mille of the file
    if op == "byte":
        return ("byte", draw(st.integers(0, 999)), draw(st.integers(0, 255)))
    if op == "tail_byte":
        return ("tail_byte", draw(st.integers(1, 120)), draw(st.integers(0, 255)))
    if op == "magic":
        return ("random", b"PAR1" + draw(st.binary(max_size=24)) + b"PAR1")
    return ("random", draw(st.binary(max_size=48)))


@st.composite
def parquet_cases(draw: Any) -> ParquetCase:
    base = draw(st.sampled_from(["plain", "rich", "tokens"]))
    edits = draw(st.lists(parquet_edit(), max_size=3))
    file_edits = draw(st.lists(parquet_file_edit(), max_size=1)) if draw(st.integers(0, 5)) == 0 else []
    return ParquetCase(base, edits, file_edits)


# -------------------------------------------------------------------------------------- recipes
@dataclass
class RecipeCase:
    data: bytes
    batch: str

    def size(self) -> int:
        return len(self.data)

    def describe(self) -> dict[str, Any]:
        return {"batch": self.batch, "file": compact(self.data)}


NUMBER_TEXTS = ["0", "1", "2", "0.5", "-1", "1.0e-6", "0.95", "1.0e-300", "1.0e+39", "1.0e+308", "-1.0e+308", ".nan",
                ".NaN", ".inf", "-.inf", "1e308", "99999999999999999999999", "9" * 5000, "0x7fffffffffffffff", "0o17",
                "0b101", "1_000", "190:20:30", "+12", "4611686018427387904", "9223372036854775808"]  # fmt: skip
WEIRD_TEXTS = ["null", "~", "[]", "{}", "[1, [2, [3]]]", "'x'", '"\\ud800"', '"\\x00"', "!!binary aGk=",
               "2001-12-14", "!!timestamp 2001-12-14 21:59:43.10", "!!set {a, b}", "!!omap [a: 1]", "!!float 'nan'",
               "!!python/name:os.system", "!!python/object/apply:os.system [ls]", "!!int 3.5", "!!str 1",
               "*a0", "&a0 0.5", "&a1 {norm: mean}", "*a1", "'" + "x" * 1200 + "'", "yes", "off", "true",
               "tool_ok", "'os:getcwd'", "[no_tool_errors, 'os:getcwd']", "{g1: [search]}", "'nope.json'"]  # fmt: skip


def hint_texts(hint: Any) -> list[str]:
    """YAML texts that fit a component parameter's type hint (roughly: the edges are the point)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return hint_texts(typing.get_args(hint)[0])
    if origin is typing.Literal:
        return [str(a) if not isinstance(a, str) else a for a in typing.get_args(hint)]
    if origin in (typing.Union, types.UnionType):
        return [t for h in typing.get_args(hint) for t in hint_texts(h)]
    if hint is type(None):
        return ["null"]
    if origin is list:
        return ["[no_tool_errors]", "[final_answer_nonempty, no_tool_errors]", "[]"]
    if origin is dict or hint is dict:
        return ["{g1: [search]}", "{}"]
    if hint is float:
        return NUMBER_TEXTS[:12]
    if hint is int:
        return ["0", "1", "2", "8", "-1", "4611686018427387904"]
    if hint is bool:
        return ["true", "false"]
    if hint is str:
        return ["tool_ok", "x", "'nope.json'"]
    return ["null"]


def _registry() -> dict[str, dict[str, dict[str, Any]]]:
    import stepcredit.recipe  # noqa: F401 - registers the components
    from stepcredit.core.registry import REGISTRY

    return {kind: {name: c.params for name, c in comps.items()} for kind, comps in REGISTRY.items()}


STAGES = ("shaping", "selection", "credit")
OTHER_KEYS = ["shaping", "selection", "selection", "name", "description"]
JUNK_KEYS = ["credits", "1", "null", "~", "true", "'credit'", "<<", "? [a]"]
JUNK_NAMES = ["GRPO", "grpo ", "'grpo'", "!!str grpo", "*a0", "&a2 grpo", "1", "null", "[grpo]", "{}", '"\\ud800"']
YAML_JUNK = ["%YAML 1.1\n---\n", "--- !!map\n", "\t", "---\n", "...\n", "\n---\nmore: 1\n", "? [a, b]\n: c\n",
             "<<: {credit: [rloo]}\n", "&a3 credit: [rloo]\n", "credit: *a3\n", "\ufeff", "\x00", "\x85", "#",
             "'", '"', "{", "[", ": ", "- ", "!!", "&", "*", "|", ">"]  # fmt: skip


@st.composite
def yaml_value(draw: Any, hint: Any) -> str:
    if hint is not None and draw(st.integers(0, 5)):
        return draw(st.sampled_from(hint_texts(hint)))
    return draw(st.sampled_from(NUMBER_TEXTS + WEIRD_TEXTS))


@st.composite
def yaml_item(draw: Any, kind: str, registry: dict[str, dict[str, dict[str, Any]]]) -> str:
    roll = draw(st.integers(0, 19))
    if roll < 17:
        name = draw(st.sampled_from(sorted(registry[kind])))
    elif roll < 19:
        name = draw(st.sampled_from(sorted({n for comps in registry.values() for n in comps})))
    else:
        return draw(st.sampled_from(JUNK_NAMES))
    accepted = registry[kind].get(name, {})
    keys = sorted(accepted) + (["weight"] * 2 if kind == "credit" else []) + ["bogus"]
    chosen = draw(st.lists(st.sampled_from(keys), max_size=2, unique=True))
    if not chosen and draw(st.booleans()):
        return draw(st.sampled_from([name, f"{name}: null", f"{{{name}: {{}}}}"]))
    params = []
    for key in chosen:
        hint = accepted[key][0] if key in accepted else (float if key == "weight" else None)
        params.append(f"{key}: {draw(yaml_value(hint))}")
    return f"{{{name}: {{{', '.join(params)}}}}}"


@st.composite
def recipe_text(draw: Any) -> str:
    registry = _registry()
    keys = draw(st.lists(st.sampled_from(OTHER_KEYS), max_size=3))
    if draw(st.integers(0, 9)):
        keys.insert(draw(st.integers(0, len(keys))), "credit")
    if draw(st.integers(0, 9)) == 0:
        keys.insert(draw(st.integers(0, len(keys))), draw(st.sampled_from(JUNK_KEYS)))
    lines = []
    for key in dict.fromkeys(keys):
        if key in STAGES:
            items = [draw(yaml_item(key, registry)) for _ in range(draw(st.sampled_from([1, 1, 2, 3, 0])))]
            style = draw(st.integers(0, 19))
            if style == 0:
                lines.append(f"{key}: {items[0] if items else ''}")  # not a list
            elif style < 10:
                lines.append(f"{key}: [{', '.join(items)}]")
            else:
                lines.append(f"{key}:" + "".join(f"\n  - {item}" for item in items))
        elif key in ("name", "description"):
            lines.append(f"{key}: {draw(st.sampled_from(['r', 'my recipe', LONG, '[1, 2]', '{a: 1}', '.nan', '']))}")
        else:
            lines.append(f"{key}: {draw(yaml_value(None))}")
    return "\n".join(lines) + "\n"


def alias_bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ncredit: [{{grpo: {{norm: *a{levels - 1}}}}}]\n"


@st.composite
def recipe_cases(draw: Any) -> RecipeCase:
    batch = draw(st.sampled_from(["flat", "flat", "flat", "tree"]))
    mode = draw(st.integers(0, 29))
    if mode == 0:
        return RecipeCase(draw(st.binary(max_size=80)), batch)
    if mode == 1:
        text = draw(st.text(alphabet="[]{}:-,&*!|>'\"#%@`?~ \n\tabcgrpo01.", max_size=80))
    elif mode == 2:
        depth = draw(st.sampled_from([10, 400, 990, 1000, 5000, 100_000]))
        text = "credit: " + draw(
            st.sampled_from(
                [
                    "[" * depth + "]" * depth,
                    "{a: " * depth + "1" + "}" * depth,
                    "[" * depth,
                    "\n" + "".join(f"{' ' * i}- \n" for i in range(min(depth, 300))),  # block sequences, indented
                ]
            )
        )
    elif mode == 3:
        text = alias_bomb(draw(st.integers(1, 10)), draw(st.integers(1, 9)))
    elif mode == 4:
        text = draw(st.sampled_from(["credit: &a [*a]\n", "credit: [{grpo: &p {norm: *p}}]\n", "a: &a {<<: *a}\n",
                                     "credit: [{grpo: {<<: [&m {norm: mean}, *m]}}]\n"]))  # fmt: skip
    else:
        text = draw(recipe_text())
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.sampled_from(YAML_JUNK)) + text[pos:]
    encoding = draw(st.sampled_from(["utf-8"] * 18 + ["utf-16", "latin-1"]))
    data = text.encode(encoding, "surrogatepass") if encoding != "latin-1" else text.encode("latin-1", "replace")
    return RecipeCase(draw(damaged(data)) if draw(st.integers(0, 5)) == 0 else data, batch)


CASES: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "chat": chat_cases,
    "tau2": tau2_cases,
    "parquet": parquet_cases,
    "references": reference_cases,
    "recipe": recipe_cases,
}
