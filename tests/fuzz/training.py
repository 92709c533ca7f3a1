"""Fuzz cases for the training side: experiment configs, resume folders and the trainer-tensor APIs.

* ``experiment``: a valid tiny experiment, mutated (values of every kind at every node, keys added,
  renamed, deleted, names with separators, duplicate keys, damaged bytes), written as a YAML file;
  ``load_experiment`` then ``experiment_folder`` (the checks ``stepcredit experiment`` makes before any
  compute) must return or raise ``ValueError`` in one line, and write nothing anywhere.
* ``resume``: a real run folder (two RL steps of the tiny setting, checkpoints at 0, 1, 2), damaged —
  files truncated, overwritten with garbage, deleted, swapped with another run's, the manifest or
  ``config.json`` edited, a checkpoint replaced by a pickle that runs a command (with the manifest's
  hash fixed to match) — and resumed with the run's config or a changed one: ``resume_point`` must
  raise ``ValueError`` in one line or give a checkpoint the manifest vouches for (or, without a
  manifest, the one it adopts) whose weights are finite; it writes nothing, and the pickled command
  never runs.
* ``tensors``: ``from_trainer_tensors`` and ``rows_from_verl_agent`` on generated masks, ids of mixed
  types (ints, strings that print the same, None, bytes, NaN, tuples, lists), outcomes with NaN / inf,
  wrong lengths, numpy and list inputs: ``RolloutError`` in one line or a finite batch whose groups
  are the distinct (value, type) ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import strategies as st

from stepcredit import RolloutError
from stepcredit.integrations.verl.agent import rows_from_verl_agent
from stepcredit.io import from_trainer_tensors
from stepcredit.train.checkpoints import MANIFEST, load_checkpoint, resume_point
from stepcredit.train.config import TrainConfig
from stepcredit.train.experiment import experiment_folder, load_experiment
from stepcredit.train.loop import train
from tests.fuzz.strategies import compact, damaged, dump, mutated, python_value, weird_values
from tests.support.train import TINY

# ------------------------------------------------------------------------------------ experiment configs
BASE_EXPERIMENT: dict[str, Any] = {
    "name": "fz",
    "seeds": [0, 1],
    "train": {**TINY, "steps": 1},
    "runs": [{"name": "grpo", "recipe": "grpo"}, {"name": "trees", "recipe": "tree_grpo", "rollout": "trees",
                                                   "tree": [1, 1, 1]}],
    "stability": {"lr_scale": 3.0, "runs": ["grpo"]},
}
HOSTILE = ["../../escaped", "/abs/path", "a/b", "..", ".", "", "x" * 200, "cuda", "cuda:7", "mps", "tiny",
           "/no/such/folder", "grpo", "no_such_recipe", "configs/recipes/tau2_gated.yaml", "trees", "chains",
           "token-mean", "seq-mean-token-sum", "k1", "k3", "low_var_kl", 1e308, -0.0, 1e-320, 10**12, 4096, 4097,
           1000, 1001, [1000, 1000, 100], [0, 0, 0], [2, 3], [2, 3, 1], {"shape": "chain"}, {"shap": 1},
           {"depth": 3}]  # fmt: skip
FIELDS = [f for f in TrainConfig.__dataclass_fields__ if f not in ("critique", "opd", "r3", "skills", "extra")]


@dataclass
class ExperimentCase:
    data: bytes
    resume: bool
    overwrite: bool

    def size(self) -> int:
        return len(self.data)

    def describe(self) -> dict[str, Any]:
        return {"resume": self.resume, "overwrite": self.overwrite, "file": compact(self.data)}


@st.composite
def experiment_cases(draw: Any) -> ExperimentCase:
    tree = copy.deepcopy(BASE_EXPERIMENT)
    for _ in range(draw(st.integers(0, 3))):  # a field of train / a run set to an edge or a hostile value
        where = draw(st.sampled_from([("train",), ("runs", 0), ("runs", 1)]))
        target: Any = tree
        for k in where:
            target = target[k]
        value = draw(st.one_of(st.sampled_from(HOSTILE), weird_values()))
        target[draw(st.sampled_from([*FIELDS, "name", "recipe", "rollout"]))] = copy.deepcopy(value)
    if draw(st.booleans()):
        tree = draw(mutated(tree, focus=[(), ("train",), ("runs",), ("seeds",), ("stability",)]))
    roll = draw(st.integers(0, 9))
    if roll < 6:
        try:
            text = yaml.safe_dump(python_value(tree), allow_unicode=False)
        except (yaml.YAMLError, RecursionError, TypeError, ValueError):
            text = dump(tree)
    else:
        text = dump(tree)  # JSON is YAML
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        data += b"\nname: again\n"  # a key given twice
    data = draw(damaged(data))
    return ExperimentCase(data, draw(st.booleans()), draw(st.booleans()))


def _listing(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in sorted(root.rglob("*")):
        st_ = p.lstat()
        out.append((str(p.relative_to(root)), st_.st_size, st_.st_mtime_ns))
    return out


def check_experiment(c: Any, case: ExperimentCase) -> None:
    root = c.workdir / "exp"
    shutil.rmtree(root, ignore_errors=True)
    (root / "out").mkdir(parents=True)
    path = root / "experiment.yaml"
    path.write_bytes(case.data)
    before = _listing(c.workdir)
    ok, exp = c.call("load_experiment", load_experiment, path, expect=ValueError)
    if ok:
        c.call("experiment_folder", experiment_folder, exp, root / "out", resume=case.resume,
               overwrite=case.overwrite, expect=ValueError)  # fmt: skip
    if _listing(c.workdir) != before:
        c.fail(("wrote",), "load_experiment", "wrote files", "checking a config wrote or changed a file")


# ------------------------------------------------------------------------------------ resume folders
_RUNS: dict[str, Path] = {}


def prepared_runs(workdir: Path) -> dict[str, Path]:
    """The real run folders the resume cases damage (made once per campaign: two tiny runs)."""
    if not _RUNS:
        base = workdir / "prepared"
        _RUNS["run"] = base / "run"
        _RUNS["other"] = base / "other"
        train(TrainConfig(**{**TINY, "steps": 2, "checkpoint_every": 1}), _RUNS["run"], progress=False)
        train(TrainConfig(**{**TINY, "steps": 1, "seed": 1}), _RUNS["other"], progress=False)
    return _RUNS


class _Payload:
    def __init__(self, mark: str) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.mark}",))


FILES = ["checkpoint-0.pt", "checkpoint-1.pt", "checkpoint-2.pt", MANIFEST, "config.json", "metrics.jsonl"]
OPS = ["truncate", "garbage", "delete", "swap", "foreign_manifest", "edit_manifest", "edit_config", "payload",
       "rename", "flip"]  # fmt: skip


@dataclass
class ResumeCase:
    ops: list[tuple[Any, ...]]
    config: dict[str, Any] = field(default_factory=dict)
    resume: bool = True

    def size(self) -> int:
        return len(repr(self.ops))

    def describe(self) -> dict[str, Any]:
        return {"ops": compact(repr(self.ops)), "config": self.config, "resume": self.resume}


@st.composite
def resume_cases(draw: Any) -> ResumeCase:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(OPS))
        name = draw(st.sampled_from(FILES))
        if op == "truncate":
            ops.append((op, name, draw(st.integers(0, 4000))))
        elif op == "garbage":
            ops.append((op, name, draw(st.binary(max_size=300))))
        elif op == "flip":
            ops.append((op, name, draw(st.integers(0, 10**6))))
        elif op in ("edit_manifest", "edit_config"):
            ops.append((op, draw(weird_values()), draw(st.integers(0, 50))))
        elif op == "payload":
            ops.append((op, draw(st.sampled_from(FILES[:3])), draw(st.booleans())))
        elif op == "rename":
            ops.append((op, draw(st.sampled_from(FILES[:3])), draw(st.sampled_from([*FILES[:3], "checkpoint-9.pt"]))))
        else:
            ops.append((op, name))
    config = draw(st.sampled_from([{}, {}, {"steps": 3}, {"lr": 0.5}, {"seed": 1}, {"steps": 1}]))
    return ResumeCase(ops, config, draw(st.integers(0, 5)) > 0)


def _edit_json(path: Path, value: Any, pick: int) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    paths: list[tuple[Any, ...]] = [()]

    def walk(node: Any, prefix: tuple[Any, ...]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            paths.append((*prefix, k))
            walk(v, (*prefix, k))

    walk(data, ())
    where = paths[pick % len(paths)]
    if not where:
        data = python_value(value)
    else:
        node = data
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = python_value(value)
    try:
        path.write_text(json.dumps(data, allow_nan=True, default=repr))
    except (ValueError, RecursionError, TypeError):
        path.write_text("{")


def _apply(op: tuple[Any, ...], run: Path, runs: dict[str, Path], mark: Path) -> None:
    kind = op[0]
    if kind in ("truncate", "garbage", "flip", "delete", "swap") and not (run / op[1]).exists():
        return
    if kind == "truncate":
        p = run / op[1]
        p.write_bytes(p.read_bytes()[: op[2]])
    elif kind == "garbage":
        (run / op[1]).write_bytes(op[2])
    elif kind == "flip":
        p = run / op[1]
        data = bytearray(p.read_bytes())
        if data:
            data[op[2] % len(data)] ^= 0xFF
            p.write_bytes(bytes(data))
    elif kind == "delete":
        (run / op[1]).unlink()
    elif kind == "swap":
        source = runs["other"] / op[1]
        if source.exists():
            shutil.copy(source, run / op[1])
    elif kind == "foreign_manifest":
        shutil.copy(runs["other"] / MANIFEST, run / MANIFEST)
    elif kind == "edit_manifest":
        _edit_json(run / MANIFEST, op[1], op[2])
    elif kind == "edit_config":
        _edit_json(run / "config.json", op[1], op[2])
    elif kind == "payload":
        target = run / op[1]
        state = {"step": int(op[1].split("-")[1].split(".")[0]), "model": {}, "optimizer": {}, "history": [],
                 "counters": _Payload(str(mark))}  # fmt: skip
        torch.save(state, target)
        if op[2]:  # the attacker fixes the manifest's hash too
            try:
                manifest = json.loads((run / MANIFEST).read_text())
                for entry in manifest["checkpoints"]:
                    if entry["file"] == op[1]:
                        entry["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
                (run / MANIFEST).write_text(json.dumps(manifest))
            except (OSError, ValueError, KeyError, TypeError):
                pass
    elif kind == "rename" and (run / op[1]).exists():
        (run / op[1]).replace(run / op[2])


def check_resume(c: Any, case: ResumeCase) -> None:
    runs = prepared_runs(c.workdir)
    run = c.workdir / "case" / "run"
    shutil.rmtree(run.parent, ignore_errors=True)
    shutil.copytree(runs["run"], run)
    mark = c.workdir / "case" / "payload-ran"
    for op in case.ops:
        _apply(op, run, runs, mark)
    config = TrainConfig(**{**TINY, "steps": 2, "checkpoint_every": 1, **case.config})
    before = _listing(run.parent)
    ok, point = c.call("resume_point", resume_point, config, run, resume=case.resume, expect=ValueError)
    if mark.exists():
        c.fail(("payload ran",), "resume_point", "code ran", "a pickled command in a checkpoint ran")
    if _listing(run.parent) != before:
        c.fail(("wrote",), "resume_point", "wrote files", "checking a resume wrote or changed a file")
    if ok and point.state is not None:
        weights = [v for v in point.state["model"].values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if not weights or not all(bool(torch.isfinite(w).all()) for w in weights):
            c.fail(("non-finite",), "resume_point", "non-finite weights", "a resumed checkpoint has no finite weights")
        if (run / MANIFEST).is_file():
            manifest = json.loads((run / MANIFEST).read_text())
            vouched = {e["step"]: e["sha256"] for e in manifest["checkpoints"]}
        else:  # a folder without a manifest is adopted: what it records must be what was checked
            vouched = {step: digest for step, _, digest in point.adopt}
        path = run / f"checkpoint-{point.step}.pt"
        if vouched.get(point.step) != hashlib.sha256(path.read_bytes()).hexdigest():
            c.fail(("unvouched",), "resume_point", "unvouched checkpoint", "resumed a checkpoint the manifest lacks")
        c.call("load_checkpoint", load_checkpoint, path, expect=ValueError)


# ------------------------------------------------------------------------------------ trainer tensors
IDS = [0, 1, "0", "1", None, "None", b"a", "a", "a\x00", math.nan, 1.5, True, ("x",), "x", "\ud800", "", 2**70]


@dataclass
class TensorCase:
    mask: Any
    index: Any
    outcome: Any
    form: str
    adapter: bool

    def size(self) -> int:
        return len(repr(self.index)) + len(repr(self.mask))

    def describe(self) -> dict[str, Any]:
        return {"form": self.form, "adapter": self.adapter, "mask": compact(repr(self.mask)),
                "index": compact(repr(self.index)), "outcome": compact(repr(self.outcome))}  # fmt: skip


@st.composite
def tensor_cases(draw: Any) -> TensorCase:
    n = draw(st.integers(0, 6))
    t = draw(st.integers(0, 5))
    odd = draw(st.integers(0, 4)) == 0
    cells = st.sampled_from([0, 1, 1, 1, 2, -1, 0.5, math.nan] if odd else [0, 1])
    mask = [[draw(cells) for _ in range(t)] for _ in range(n)]
    rows = n + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    index = [draw(st.sampled_from(IDS)) for _ in range(max(rows, 0))]
    values = st.sampled_from([0.0, 1.0, 0.5, -1.0, math.nan, math.inf, 1e39])
    outcome = [draw(values) if draw(st.integers(0, 5)) == 0 else draw(st.sampled_from([0.0, 1.0]))
               for _ in range(max(n + draw(st.sampled_from([0, 0, 0, 1])), 0))]  # fmt: skip
    return TensorCase(mask, index, outcome, draw(st.sampled_from(["tensor", "numpy", "list"])), draw(st.booleans()))


def _form(value: list[Any], form: str, dtype: Any = torch.float32) -> Any:
    if form == "list":
        return value
    arr = np.array(value, dtype=np.float64)
    return arr if form == "numpy" else torch.as_tensor(arr, dtype=dtype)


def _distinct(index: list[Any]) -> int | None:
    keys = set()
    for x in index:
        try:
            keys.add((type(x), x))
        except TypeError:
            return None
    return len(keys)


def check_tensors(c: Any, case: TensorCase) -> None:
    index = np.empty(len(case.index), dtype=object)
    index[:] = case.index
    try:
        mask = _form(case.mask, case.form)
        outcome = _form(case.outcome, case.form)
    except ValueError:
        return  # a ragged list numpy cannot hold: nothing to call
    if case.adapter:
        rewards = np.array(case.outcome[: len(case.index)] + [0.0] * max(0, len(case.index) - len(case.outcome)))
        mask_t = torch.as_tensor(np.array(case.mask, dtype=float))
        uid = np.array(["g"] * len(case.index), dtype=object)
        ok, rows = c.call("rows_from_verl_agent", rows_from_verl_agent, mask_t, uid, index, rewards,
                          expect=RolloutError)
        if ok:
            c.finite("rows_from_verl_agent", rows.rollouts)
        return
    ok, r = c.call("from_trainer_tensors", from_trainer_tensors, mask, index, outcome=outcome, expect=RolloutError)
    if ok:
        c.finite("from_trainer_tensors", r)
        if _nan_free(case.index) and _distinct(case.index) not in (None, r.num_groups):
            c.fail(("groups",), "from_trainer_tensors", "ids merged", f"{r.num_groups} groups for {case.index!r}")


def _nan_free(index: list[Any]) -> bool:
    """NaN is not equal to itself: ids holding it have no well-defined count of distinct values."""
    return not any(isinstance(x, float) and math.isnan(x) for x in index)


CASES = {"experiment": experiment_cases, "resume": resume_cases, "tensors": tensor_cases}
CHECKS = {"experiment": check_experiment, "resume": check_resume, "tensors": check_tensors}
