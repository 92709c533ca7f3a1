"""A fuzz campaign over one loader, run in its own process under a memory bound.

    python -m tests.fuzz.campaign chat --examples 1000 --seed 0

Loaders: ``chat`` (chat JSONL / JSON: ``load``, ``parse_record``), ``tau2`` (``load``,
``parse_tau2``), ``parquet`` (``read_parquet``, ``load``, ``from_arrow``, the streaming readers
``iter_group_chunks``, ``plan_group_chunks`` + ``read_chunk``), ``references``
(``read_references``, ``check_references``, ``load(..., references=)``) and ``recipe``
(``Recipe.load`` of a YAML file, then ``Recipe.run`` on a small synthetic batch); and the training side
(``tests/fuzz/training.py``): ``experiment`` (``load_experiment`` + ``experiment_folder`` of a YAML
config, writing nothing), ``resume`` (``resume_point`` on damaged real run folders) and ``tensors``
(``from_trainer_tensors``, ``rows_from_verl_agent``).

Each example passes when every call either returns or raises the documented error type
(``RolloutError``; ``RecipeError`` for recipe files; any ``ValueError`` from running a recipe), the
error message is one line under 1000 characters, and what is returned is finite (every float column
of a ``Rollouts`` except ``confidence``, where NaN means "not stated"; a recipe's credit). Anything
else — another exception type, a non-finite value, an example running past ``--example-timeout`` —
is a failure. Failures do not stop the campaign: they are grouped by exception type and the
stepcredit line that raised it, and the smallest input seen for each is kept as its reproducer.

The process bounds its address space (``RLIMIT_AS``) to its own size after start-up plus
``--headroom-mib``, so a loader that allocates without bound fails with MemoryError (a failure) or
is killed; ``--last FILE`` holds the input being run, so a killed run still names it.

Prints one JSON object: loader, examples, seconds, memory bound, failures (type, message, where,
function, count, reproducer). Exit status 0 when there are no failures, 1 otherwise, 2 when the
harness itself broke.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

import stepcredit
from stepcredit import Recipe, RecipeError, RolloutError, Rollouts
from stepcredit.envs import make_rollouts, make_tree_rollouts
from stepcredit.io import (
    ChatFields,
    build,
    check_references,
    from_arrow,
    iter_group_chunks,
    parse_record,
    parse_tau2,
    plan_group_chunks,
    read_chunk,
)
from tests.fuzz import parquet_edits, training
from tests.fuzz.strategies import CASES, FIELD_SETS, ParquetCase, compact, python_value

MAX_MESSAGE = 1000
SRC = str(Path(stepcredit.__file__).resolve().parent)


class ExampleTimeout(BaseException):
    """One example ran past its time (a BaseException, so no loader's ``except`` swallows it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise ExampleTimeout


def _where(exc: BaseException) -> tuple[str, str]:
    """(the last stepcredit frame, the last frame) of the traceback, as ``file:line function``."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename.startswith(SRC)]

    def fmt(f: traceback.FrameSummary | None) -> str:
        if f is None:
            return "-"
        name = f.filename[len(SRC) - len("stepcredit") :] if f.filename.startswith(SRC) else Path(f.filename).name
        return f"{name}:{f.lineno} {f.name}"

    return fmt(own[-1] if own else None), fmt(frames[-1] if frames else None)


def _long_part(exc: BaseException) -> str | None:
    """Which part of a RolloutError's message is long (``RolloutError.group``: a quoted group name), so
    that one unbounded quote reached from many places is one failure; None for the reason itself."""
    parts = {k: getattr(exc, k, None) for k in ("source", "trajectory", "group", "field")}
    long = [k for k, v in parts.items() if isinstance(v, str) and len(v) > MAX_MESSAGE // 4]
    return f"RolloutError.{long[0]} quoted whole" if long else None


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose message cannot be made is itself worth seeing
        return f"<str() of {type(exc).__name__} failed>"


class Campaign:
    def __init__(self, loader: str, workdir: Path, last: Path | None) -> None:
        self.loader, self.workdir, self.last = loader, workdir, last
        self.examples = 0
        self.skipped = 0  # generator edits that could not be applied (Parquet tables pyarrow cannot write)
        self.failures: dict[tuple[str, ...], dict[str, Any]] = {}
        self.case: Any = None
        self.subject: Any = None  # the object a direct call got (its reproducer rather than the file)
        self.outcomes: dict[str, dict[str, int]] = {}  # function -> {"ok": n, "error": n, "failure": n}
        self.messages: dict[str, int] | None = None  # with --stats: error message openings -> count

    def count(self, function: str, outcome: str) -> None:
        per = self.outcomes.setdefault(function, {})
        per[outcome] = per.get(outcome, 0) + 1

    # ---------------------------------------------------------------------------- recording
    def fail(self, key: tuple[str, ...], function: str, kind: str, message: str, where: str = "-", last: str = "-"):
        if self.subject is not None:
            shown = compact(repr(self.subject))
            size, reproducer = len(shown), {**self.case.options, "object": shown}
        else:
            size, reproducer = self.case.size(), self.case.describe()
        entry = self.failures.get(key)
        if entry is None:
            entry = self.failures[key] = {"kind": kind, "function": function, "where": where, "raised_at": last,
                                          "count": 0, "functions": []}  # fmt: skip
        entry["count"] += 1
        if function not in entry["functions"]:
            entry["functions"].append(function)
        if "size" not in entry or size < entry["size"]:
            entry.update(size=size, function=function, message=message[:400], reproducer=reproducer)

    def call(self, function: str, fn: Any, *args: Any, expect: type[BaseException] = RolloutError, **kwargs: Any):
        """``(True, value)`` or ``(False, None)``; records a failure unless ``fn`` returned or raised
        ``expect`` with a one-line message under MAX_MESSAGE characters."""
        try:
            value = fn(*args, **kwargs)
        except expect as exc:
            msg = _text(exc)
            self.count(function, "error")
            if self.messages is not None:
                opening = f"{function}: {msg.split(': ')[-1][:70]}"
                self.messages[opening] = self.messages.get(opening, 0) + 1
            if len(msg) >= MAX_MESSAGE or len(msg.splitlines()) > 1:
                where, last = _where(exc)
                what = "too long" if len(msg) >= MAX_MESSAGE else "several lines"
                kind = f"{type(exc).__name__} message {what} ({len(msg)} chars)"
                key = ("message", what, _long_part(exc) or where)
                self.fail(key, function, kind, compact(msg, 600), where, last)
            return False, None
        except Exception as exc:
            self.count(function, "failure")
            where, last = _where(exc)
            self.fail((type(exc).__name__, where), function, type(exc).__qualname__, _text(exc), where, last)
            return False, None
        self.count(function, "ok")
        return True, value

    def finite(self, function: str, r: Any) -> None:
        if not isinstance(r, Rollouts):
            self.fail(("returned", type(r).__name__), function, "not a Rollouts", repr(type(r)))
            return
        for name in r.columns():
            value = getattr(r, name)
            if (
                name != "confidence"
                and isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                self.fail(("non-finite", name), function, "non-finite output", f"column {name!r} is not finite")

    # ------------------------------------------------------------------------------- driving
    def example(self, case: Any, check: Any, timeout: float) -> None:
        self.case, self.subject = case, None
        self.examples += 1
        if self.last is not None:
            self.last.write_text(json.dumps({"loader": self.loader, "example": self.examples,
                                             "case": case.describe()}, default=repr))  # fmt: skip
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            check(self, case)
        except ExampleTimeout:
            self.fail(("timeout",), "-", "timeout", f"the example ran past {timeout} s")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for key, entry in sorted(self.failures.items(), key=lambda kv: -kv[1]["count"]):
            out.append({"key": list(key), **{k: v for k, v in entry.items() if k != "size"}})
        return out


# ------------------------------------------------------------------------------------ checks
def check_chat(c: Campaign, case: Any) -> None:
    fields = FIELD_SETS[case.options["fields"]]
    path = c.workdir / f"log{case.suffix}"
    path.write_bytes(case.data)
    ok, r = c.call("load", stepcredit.load, path, fields=fields)
    if ok:
        c.finite("load", r)
    for i, tree in enumerate(case.trees):
        c.subject = tree
        ok, rec = c.call("parse_record", parse_record, python_value(tree), f"x:{i}", fields)
        if ok:
            ok, r = c.call("build", build, [rec])
            if ok:
                c.finite("parse_record+build", r)
    c.subject = None


def check_tau2(c: Campaign, case: Any) -> None:
    opts = case.options
    path = c.workdir / "results.json"
    path.write_bytes(case.data)
    fields = ChatFields(id=opts["id_field"])
    ok, r = c.call("load", stepcredit.load, path, format=opts["format"], labels=opts["labels"], fields=fields)
    if ok:
        c.finite("load", r)
    c.subject = case.trees[0]
    obj = python_value(case.trees[0])
    ok, recs = c.call("parse_tau2", parse_tau2, obj, "r.json", labels=opts["labels"], id_field=opts["id_field"])
    if ok and recs:
        ok, r = c.call("build", build, recs)
        if ok:
            c.finite("parse_tau2+build", r)
    c.subject = None


REFERENCE_LOG = [
    {"id": f"t{i}", "group": group, "reward": float(i % 2), "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}},
            {"id": "b", "type": "function", "function": {"name": "book_reservation",
                                                         "arguments": '{"user_id": "u", "x": 1}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "found"},
        {"role": "tool", "tool_call_id": "b", "content": "booked"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "transfer_to_human_agents",
                                                              "arguments": {"summary": "s"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
        {"role": "assistant", "content": "done"}]}
    for i, group in enumerate(["g1", "g1", "g2", "7"])
]  # fmt: skip


def check_references_case(c: Campaign, case: Any) -> None:
    path = c.workdir / "refs.json"
    path.write_bytes(case.data)
    log = c.workdir / "log.jsonl"
    if not log.exists():
        log.write_text("".join(json.dumps(rec) + "\n" for rec in REFERENCE_LOG))
    ok, _ = c.call("read_references", stepcredit.io.read_references, path)
    if ok:
        ok, r = c.call("load(references=)", stepcredit.load, log, references=path)
        if ok:
            c.finite("load(references=)", r)
    c.subject = case.trees[0]
    c.call("check_references", check_references, python_value(case.trees[0]))
    c.subject = None


_TABLES: dict[str, pa.Table] = {}


def check_parquet(c: Campaign, case: Any) -> None:
    if not _TABLES:
        _TABLES.update(parquet_edits.base_tables())
    table: pa.Table | None = _TABLES[case.base]
    for edit in case.edits:
        try:
            table = parquet_edits.apply_edit(table, edit)
        except Exception:
            c.skipped += 1
    assert table is not None
    ok, r = c.call("from_arrow", from_arrow, table)
    if ok:
        c.finite("from_arrow", r)
    try:
        data = parquet_edits.to_bytes(table)
    except Exception:
        c.skipped += 1
        data = parquet_edits.to_bytes(_TABLES[case.base])
    for edit in case.file_edits:
        data = parquet_edits.damage(data, edit)
    path = c.workdir / "log.parquet"
    path.write_bytes(data)
    ok, r = c.call("read_parquet", stepcredit.io.read_parquet, path)
    if ok:
        c.finite("read_parquet", r)
    ok, r = c.call("load", stepcredit.load, path)
    if ok:
        c.finite("load", r)
    # the streaming readers: the same file in chunks of 2 groups, read in one pass and by plan
    ok, chunks = c.call("iter_group_chunks", lambda p: list(iter_group_chunks(p, 2, batch_size=3)), path)
    for chunk in chunks if ok else []:
        c.finite("iter_group_chunks", chunk)
    ok, plans = c.call("plan_group_chunks", plan_group_chunks, path, 2, batch_size=3)
    for plan in plans if ok else []:
        ok, chunk = c.call("read_chunk", read_chunk, plan)
        if ok:
            c.finite("read_chunk", chunk)


def _batch(name: str) -> Rollouts:
    if name == "tree":
        return make_tree_rollouts(2, trees_per_task=2, leaves_per_tree=2, depth=3, seed=0)
    return make_rollouts(3, 4, seed=0)


def check_recipe(c: Campaign, case: Any) -> None:
    path = c.workdir / "recipe.yaml"
    path.write_bytes(case.data)
    ok, recipe = c.call("Recipe.load", Recipe.load, str(path), allow_imports=False, expect=RecipeError)
    if not ok:
        return
    batch = _batch(case.batch)
    ok, result = c.call("Recipe.run", recipe.run, batch, expect=ValueError)
    if not ok:
        return
    ok, per_step = c.call("Credit.per_step", result.credit.per_step, result.rollouts)
    if ok and not bool(torch.isfinite(per_step).all()):
        c.fail(("non-finite", "credit"), "Recipe.run", "non-finite output", "result.credit.per_step is not finite")
    c.call("Recipe.from_dict(to_dict())", Recipe.from_dict, recipe.to_dict(), expect=RecipeError)


CHECKS = {
    "chat": check_chat,
    "tau2": check_tau2,
    "parquet": check_parquet,
    "references": check_references_case,
    "recipe": check_recipe,
    **training.CHECKS,
}
STRATEGIES = {**CASES, **training.CASES}


# ------------------------------------------------------------------------------ the process
def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def bound_memory(headroom: int) -> int | None:
    """Limit this process's address space to its current size + ``headroom`` bytes (Linux)."""
    try:
        bound = _vm_size() + headroom
    except OSError:
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        bound = min(bound, hard)
    resource.setrlimit(resource.RLIMIT_AS, (bound, hard))
    return bound


def run(
    loader: str, examples: int, seed: int, *, timeout: float, headroom: int, last: Path | None, stats: bool = False
) -> dict[str, Any]:
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{loader}-") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # a recipe parameter may name a file: never one of the repository's
        campaign = Campaign(loader, workdir, last)
        check, strategy = CHECKS[loader], STRATEGIES[loader]()
        signal.signal(signal.SIGALRM, _on_alarm)
        # warm up (thread pools, lazy imports) before measuring the size the bound is added to
        campaign.example(ParquetCase("tokens", [], []), check_parquet, timeout)
        Recipe.load("grpo").run(_batch("flat"))
        if loader == "resume":
            training.prepared_runs(workdir)  # the real runs the cases damage, trained before the bound
        campaign.failures.clear()
        campaign.examples = campaign.skipped = 0
        campaign.outcomes.clear()
        campaign.messages = {} if stats else None
        limit = bound_memory(headroom)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @hypothesis_seed(seed)
        @given(strategy)
        def fuzz(case: Any) -> None:
            campaign.example(case, check, timeout)

        fuzz()
        return {
            "loader": loader,
            "examples": campaign.examples,
            "seed": seed,
            "seconds": round(time.monotonic() - started, 1),
            "memory_limit_bytes": limit,
            "skipped_edits": campaign.skipped,
            "outcomes": campaign.outcomes,
            **({"messages": dict(sorted(campaign.messages.items(), key=lambda kv: -kv[1]))} if stats else {}),
            "failures": campaign.summary(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("loader", choices=sorted(CHECKS))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--example-timeout", type=float, default=20.0, help="seconds one example may take")
    parser.add_argument("--headroom-mib", type=int, default=2048, help="address space allowed past start-up")
    parser.add_argument("--last", type=Path, default=None, help="file that holds the input being run")
    parser.add_argument("--stats", action="store_true", help="also count the error messages seen (for tuning)")
    args = parser.parse_args(argv)
    try:
        last = args.last.resolve() if args.last else None
        out = run(args.loader, args.examples, args.seed, timeout=args.example_timeout,
                  headroom=args.headroom_mib << 20, last=last, stats=args.stats)  # fmt: skip
    except BaseException as exc:
        print(json.dumps({"loader": args.loader, "error": "".join(traceback.format_exception(exc))[-4000:]}))
        return 2
    print(json.dumps(out, default=repr, ensure_ascii=True))
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
