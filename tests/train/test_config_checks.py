"""Experiment configs are checked whole before any compute: every bad value is one line naming the file
and the field, exit 2, and nothing is written (the probes of issue 18, each as a case)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepcredit.train.config import TrainConfig
from stepcredit.train.experiment import load_experiment
from tests.support.cli import one_line_exit_2, run
from tests.support.train import TINY

BASE: dict[str, Any] = {"name": "probe", "seeds": [0], "train": {**TINY, "steps": 1}, "runs": [{"recipe": "grpo"}]}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    target: Any = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


CASES = [
    (("name",), "../../escaped", "name must be a name"),
    (("name",), "/abs/path", "name must be a name"),
    (("runs", 0, "name"), "a/b", "runs[0].name must be a name"),
    (("train", "lr"), float("inf"), "train.lr must be a finite number in (0, 10]"),
    (("train", "lr"), "fast", "train.lr must be a finite number in (0, 10]"),
    (("train", "clip_low"), -0.1, "train.clip_low must be"),
    (("train", "clip_c"), 0.5, "train.clip_c must be"),
    (("train", "steps"), True, "train.steps must be int"),
    (("seeds",), [0, 0], "seeds must be distinct"),
    (("seeds",), [], "seeds must be a non-empty list"),
    (("seeds",), 5, "seeds must be a non-empty list"),
    (("train",), [1, 2], "train must be a mapping"),
    (("train", "tree"), 5, "train.tree must be a list of 3"),
    (("runs", 0, "tree"), [0, 0, 0], "runs[0].tree must be a list of 3"),
    (("train", "env_options"), {"shap": "chain"}, "env_options: unknown option(s) ['shap']"),
    (("train", "env_options"), {"depth": 3}, "env_options: ['depth'] are TrainConfig fields"),
    (("train", "model"), "/no/such/model/folder", "is neither 'tiny' nor a folder"),
    (("train", "device"), "cuda:99", "'cuda:99' is not available"),
    (("train", "device"), "tpu", "must be cpu, cuda, cuda:N or mps"),
    (("runs", 0, "recipe"), "no_such_recipe", "runs[0] (no_such_recipe)"),
    (("runs", 0, "loss_agg"), "per-banana", "runs[0].loss_agg must be"),
    (("runs", 0, "kl"), "k9", "runs[0].kl must be"),
    (("train", "max_new_tokens"), 1_000_000_000, "train.max_new_tokens must be int in [1, 4096]"),
    (("train", "group_size"), 1001, "train.group_size must be int in [1, 1000]"),
    (("stability",), {"lr_scale": -1.0}, "stability.lr_scale must be a finite number > 0"),
    (("stability",), {"lr_scale": "x"}, "stability.lr_scale must be a finite number > 0"),
    (("stability",), {"lr_scale": 1e308}, "at stability.lr_scale"),
    (("runs",), [], "runs must be a non-empty list"),
    (("runs", 0, "seed"), 3, "unknown key(s) ['seed']"),
]
CASES += [
    (("runs", 0), {"recipe": "tree_grpo", "rollout": "trees", "tree": [1000, 1000, 100]}, "leaves per task"),
    (("train", "groups_per_step"), 100_000, "per step; at most 100000"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), CASES, ids=[f"{'.'.join(map(str, c[0]))}={c[1]!r}"[:60]
                                                                    for c in CASES])
def test_a_bad_config_is_one_line_before_anything_runs(path: tuple[Any, ...], value: Any, fragment: str,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_with(path, value)))
    out = tmp_path / "out"
    out.mkdir()
    res = run("experiment", str(config), "--out", str(out), "--quiet")
    one_line_exit_2(res, fragment)
    assert str(config) in res.stderr  # the file is named
    assert not any(out.iterdir()) and not (tmp_path.parent / "escaped").exists()


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text("name: probe\ntrain: {steps: 1, lr: 0.001, lr: 0.5}\nruns: [{recipe: grpo}]\n")
    one_line_exit_2(run("experiment", str(config), "--out", str(tmp_path), "--quiet"), "duplicate key 'lr'")


def test_a_model_folder_without_weights_and_out_as_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump(_with(("train", "model"), str(folder))))
    one_line_exit_2(run("experiment", str(config), "--out", str(tmp_path), "--quiet"), "holds no weights")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    (tmp_path / "a-file").write_text("x")
    one_line_exit_2(run("experiment", str(good), "--out", str(tmp_path / "a-file"), "--quiet"), "--out is a file")
    res = run("experiment", str(good), "--out", str(tmp_path), "--resume", "--overwrite")
    one_line_exit_2(res, "give one")


def test_train_config_checks_by_type_hint_in_python_too() -> None:
    with pytest.raises(ValueError, match=r"TrainConfig\.lr must be a finite number in \(0, 10\], got inf"):
        TrainConfig(lr=float("inf"))
    with pytest.raises(ValueError, match=r"TrainConfig\.steps must be int"):
        TrainConfig(steps=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"TrainConfig\.tree must be a list of 3"):
        TrainConfig(tree=(2, 3))  # type: ignore[arg-type]
    assert TrainConfig(tree=[2, 3, 1]).tree == (2, 3, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x\.yaml: train\.top_p must be"):
        TrainConfig.parse({"top_p": 0.0}, "x.yaml: train")
    exp = load_experiment(BASE)
    assert exp.runs[0].name == "grpo" and exp.train.steps == 1
