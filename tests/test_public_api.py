"""The public API is flat: everything a user needs is a name in ``stepcredit.__all__``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import stepcredit

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_is_importable():
    for name in stepcredit.__all__:
        assert getattr(stepcredit, name) is not None, name
    for name in ("Rollouts", "Credit", "Recipe", "load", "from_trainer_tensors", "audit", "build", "register"):
        assert name in stepcredit.__all__
    registered = {c.fn.__name__ for kind in ("credit",) for c in stepcredit.registry.REGISTRY[kind].values()}
    assert registered <= set(stepcredit.__all__)  # every estimator by name


def test_subpackages_declare_all():
    import stepcredit.auditing
    import stepcredit.envs
    import stepcredit.estimators
    import stepcredit.io
    import stepcredit.rollouts
    import stepcredit.selection
    import stepcredit.shaping

    for mod in (
        stepcredit.auditing,
        stepcredit.envs,
        stepcredit.estimators,
        stepcredit.io,
        stepcredit.rollouts,
        stepcredit.selection,
        stepcredit.shaping,
    ):
        assert mod.__all__ and all(hasattr(mod, n) for n in mod.__all__), mod.__name__


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_examples_use_only_public_names():
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        assert not re.search(r"from stepcredit\.\w+ import|import stepcredit\.", block), block


@pytest.mark.realdata
def test_readme_quick_tour_runs(tau2_dir, monkeypatch):
    import torch

    tour = python_blocks()[0]
    # the trainer-tensor lines need a batch; give them a small one
    n, t = 4, 6
    names = {
        "response_mask": torch.tensor([[1, 1, 0, 1, 1, 0]] * n),
        "uids": ["a", "a", "b", "b"],
        "rewards": torch.zeros(n, t),
        "ids": torch.tensor([[7, 8, 0, 5, 6, 0]] * n),  # a tool call <7> ... <8> in the first turn
        "tc_open": 7,
        "tc_close": 8,
    }
    monkeypatch.chdir(README.parent)  # the tour loads ../shared/data/... from the repository root
    exec(compile(tour, "README", "exec"), names)
    whole, rollouts = names["whole"], names["rollouts"]
    assert sorted(whole.texts.ids.to_pylist()) == sorted(rollouts.texts.ids.to_pylist())
    assert whole.num_groups == rollouts.num_groups and whole.num_calls == rollouts.num_calls
    assert names["report"].unit == "call"
    build_example = python_blocks()[1]
    exec(compile(build_example, "README", "exec"), {})


def test_readme_environment_tour_runs():
    block = next(b for b in python_blocks() if "rollout_trees" in b)
    names: dict[str, object] = {}
    exec(compile(block, "README", "exec"), names)
    assert names["info"]["label"] == 1  # type: ignore[index]
    assert names["trees"].rollouts.tree is not None  # type: ignore[attr-defined]
