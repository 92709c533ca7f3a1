"""The public API is narrow and lazy: the data model, the loaders, the recipe, the audit and the
estimators at the top; everything else in its subpackage, imported on first use; Python name =
registry name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import stepcredit
from stepcredit.core.registry import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"
HEAVY = ("gymnasium", "matplotlib", "transformers", "rich", "typer", "stepcredit.train", "stepcredit.envs",
         "stepcredit.auditing", "stepcredit.generation", "stepcredit.feedback", "stepcredit.integrations")


def test_every_public_name_is_importable():
    for name in stepcredit.__all__:
        assert getattr(stepcredit, name) is not None, name
    for name in ("Rollouts", "Credit", "Recipe", "load", "from_trainer_tensors", "audit", "build", "register"):
        assert name in stepcredit.__all__
    assert len(stepcredit.__all__) == len(set(stepcredit.__all__))
    assert len(set(stepcredit.__all__) - set(stepcredit.ESTIMATORS)) <= 20


def test_the_estimators_at_the_top_are_the_registered_credit_components():
    import stepcredit.estimators

    assert set(stepcredit.ESTIMATORS) == set(REGISTRY["credit"]) == set(stepcredit.estimators.__all__)
    for name in stepcredit.ESTIMATORS:
        assert getattr(stepcredit, name) is getattr(stepcredit.estimators, name)


@pytest.mark.parametrize("kind", ["shaping", "selection", "credit"])
def test_python_name_is_registry_name(kind):
    import importlib

    import stepcredit.recipe  # noqa: F401 - registers every component

    package = importlib.import_module(f"stepcredit.{'estimators' if kind == 'credit' else kind}")
    for name, component in REGISTRY[kind].items():
        assert component.fn.__name__ == name
        assert getattr(package, name) is component.fn, f"stepcredit.{package.__name__}.{name}"


def test_subpackages_are_attributes_on_first_use():
    assert stepcredit.envs.__name__ == "stepcredit.envs"
    assert stepcredit.train.TrainConfig is not None
    with pytest.raises(AttributeError):
        stepcredit.release_buffers  # noqa: B018 - gone with the buffer pool


def test_subpackages_declare_all():
    import importlib

    for name in ("auditing", "core", "envs", "estimators", "feedback", "generation", "io", "selection", "shaping",
                 "streaming", "train", "views"):
        mod = importlib.import_module(f"stepcredit.{name}")
        assert mod.__all__ and all(hasattr(mod, n) for n in mod.__all__), mod.__name__


def _loaded_by(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_stepcredit_loads_only_the_core():
    loaded = _loaded_by("import stepcredit")
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, heavy
    assert "stepcredit.core.batch" in loaded


def test_a_recipe_run_loads_no_environment_trainer_or_plot():
    loaded = _loaded_by("import torch, stepcredit\n"
                        "r = stepcredit.from_trainer_tensors(torch.ones(2, 3), ['a', 'a'],\n"
                        "                                    outcome=torch.tensor([0., 1.]))\n"
                        "stepcredit.Recipe.load('call_evidence').run(r).credit.to_tokens(r)")
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, heavy


def test_readme_examples_use_only_public_names():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        assert not re.search(r"from stepcredit\.\w+ import|import stepcredit\.", block), block
