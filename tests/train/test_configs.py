"""Every file in configs/ loads from any working directory: experiments (configs/experiments/) with
every run's recipe inline or built in, recipe files (configs/recipes/) as recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepcredit.recipe import Recipe, builtin_recipes
from stepcredit.train.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))


def test_configs_are_found() -> None:
    assert EXPERIMENTS and RECIPES
    assert not list((ROOT / "configs").glob("*.yaml")), "configs live in configs/experiments or configs/recipes"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_loads_from_anywhere(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # recipes are inline or built in: no path relative to the repository
    exp = load_experiment(path)
    assert exp.runs
    for run in exp.runs:
        assert isinstance(run.recipe, dict) or run.recipe in builtin_recipes(), run.name
        assert Recipe.load(run.recipe).credit, run.name


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_file_loads(path: Path) -> None:
    assert Recipe.from_yaml(path).credit
