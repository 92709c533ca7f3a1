"""Every file in configs/ loads: experiments with every run's recipe, recipe files as recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stepcredit.recipe import Recipe
from stepcredit.train.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # experiment configs name recipe files from the repository root
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "runs" in data:
        exp = load_experiment(path)
        assert exp.runs
        for run in exp.runs:
            assert Recipe.load(run.recipe).credit, run.name
    else:
        assert Recipe.from_yaml(path).credit
