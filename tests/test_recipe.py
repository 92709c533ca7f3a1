"""Recipes: loading, validation, composition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stepcredit import Recipe, RecipeError, Rollouts, grpo
from stepcredit.core.registry import REGISTRY, register
from stepcredit.envs import make_rollouts
from stepcredit.estimators import rloo
from stepcredit.recipe import builtin_recipes


@pytest.fixture(scope="module")
def rollouts():
    return make_rollouts(6, 4, seed=2)


def test_builtin_recipes_load_and_run(rollouts):
    names = builtin_recipes()
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "ms_grpo", "ms_grpo_sampled"} <= set(names)
    for name in names:
        if name == "prm_step":  # the second half of prm_mix: the bare recipe needs PRM scores in the log
            with pytest.raises(ValueError, match="prm_step needs PRM scores"):
                Recipe.builtin(name).run(rollouts)
            continue
        result = Recipe.builtin(name).run(rollouts)
        result.credit.check(result.rollouts)
        assert result.kept.numel() == result.rollouts.num_trajectories


def test_builtin_grpo_equals_estimator(rollouts):
    assert torch.equal(Recipe.load("grpo").run(rollouts).credit.trajectory, grpo(rollouts).trajectory)
    assert torch.equal(Recipe.load("dr_grpo").run(rollouts).credit.trajectory, grpo(rollouts, norm="mean").trajectory)


def test_weighted_sum(rollouts):
    recipe = Recipe.from_dict({"credit": [{"grpo": {"weight": 0.5}}, {"rloo": {"weight": 2}}]})
    want = grpo(rollouts).trajectory * 0.5 + rloo(rollouts).trajectory * 2
    assert torch.allclose(recipe.run(rollouts).credit.trajectory, want)
    assert recipe.to_dict()["credit"] == [{"grpo": {"weight": 0.5}}, {"rloo": {"weight": 2.0}}]
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()


def test_yaml_file(tmp_path, rollouts):
    p = tmp_path / "mine.yaml"
    p.write_text("credit:\n  - grpo: {norm: mean, eps: 0.0}\n")
    recipe = Recipe.load(str(p))
    assert recipe.name == "mine"
    assert torch.equal(recipe.run(rollouts).credit.trajectory, grpo(rollouts, norm="mean", eps=0.0).trajectory)


def test_sampling_runs_after_credit_on_full_groups(rollouts):
    result = Recipe.load("ms_grpo_sampled").run(rollouts)
    full = Recipe.load("ms_grpo").run(rollouts).credit.trajectory
    assert torch.equal(result.credit.trajectory, full[result.kept])  # advantages from the full groups
    assert result.rollouts.num_trajectories <= rollouts.num_trajectories // 2


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"credit": [{"nope": {}}]}, "unknown credit component 'nope'; known: "),
        ({"credit": [{"grpo": {"nrom": "std"}}]}, "'grpo' has no parameter 'nrom'; accepted: norm, eps"),
        ({"credit": [{"grpo": {"norm": "max"}}]}, "grpo.norm must be 'std' | 'mean' | 'none'"),
        ({"credit": [{"grpo": {"eps": "small"}}]}, "grpo.eps must be a finite number"),
        ({"credit": [{"grpo": {"unbiased": 1}}]}, "grpo.unbiased must be bool"),
        ({"credit": [{"grpo": {"weight": "x"}}]}, "weight of 'grpo' must be a finite number"),
        ({"credit": [{"grpo": 3}]}, "must be a mapping"),
        ({"credit": [["grpo"]]}, "expected a component name"),
        ({"credit": "grpo"}, "credit must be a list"),
        ({"credit": []}, "needs at least one credit component"),
        ({"credits": [{"grpo": {}}]}, "unknown stage(s) ['credits']"),
        ({"selection": [{"grpo": {}}], "credit": ["grpo"]}, "unknown selection component 'grpo'"),
        ({"selection": [{"abs_adv_sampling": {"seed": 1.5}}], "credit": ["grpo"]}, "seed must be int"),
        ("grpo", "a recipe is a mapping"),
    ],
)
def test_bad_recipes(config, fragment):
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(config, name="r") if not isinstance(config, str) else Recipe.from_dict(config)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_unknown_builtin_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown recipe 'grop'; built-in: .*grpo"):
        Recipe.load("grop")
    bad = tmp_path / "bad.yaml"
    bad.write_text("credit: [grpo\n")
    with pytest.raises(RecipeError, match="cannot read recipe"):
        Recipe.load(bad)


def test_custom_shaping_and_selection_components(rollouts):
    @register("shaping", "test_flip_outcome")
    def flip(r: Rollouts, *, scale: float = 1.0) -> Rollouts:
        """Test component: outcome → scale · (1 − outcome)."""
        return Rollouts(**{**_cols(r), "outcome": scale * (1 - r.outcome)})

    @register("selection", "test_first_half")
    def first_half(r: Rollouts) -> torch.Tensor:
        """Test component: the first half of the batch."""
        return torch.arange(r.num_trajectories // 2)

    try:
        recipe = Recipe.from_dict(
            {"shaping": [{"test_flip_outcome": {"scale": 2}}], "selection": ["test_first_half"], "credit": ["grpo"]}
        )
        result = recipe.run(rollouts)
        half = rollouts.select(torch.arange(rollouts.num_trajectories // 2))
        flipped = Rollouts(**{**_cols(half), "outcome": 2 * (1 - half.outcome)})
        assert torch.equal(result.credit.trajectory, grpo(flipped).trajectory)
        assert result.kept.tolist() == list(range(rollouts.num_trajectories // 2))
        with pytest.raises(ValueError, match="already registered"):
            register("shaping", "test_flip_outcome")(lambda r: r)
    finally:
        REGISTRY["shaping"].pop("test_flip_outcome", None)
        REGISTRY["selection"].pop("test_first_half", None)


def _cols(r: Rollouts) -> dict:
    from dataclasses import fields

    return {f.name: getattr(r, f.name) for f in fields(r)}


def test_credit_selection_must_come_last():
    @register("selection", "test_keep_all")
    def keep_all(r: Rollouts) -> torch.Tensor:
        """Test component: keep everything."""
        return torch.arange(r.num_trajectories)

    try:
        late_then_plain = [{"abs_adv_sampling": {"fraction": 0.5}}, "test_keep_all"]
        with pytest.raises(RecipeError, match="must come last"):
            Recipe.from_dict({"selection": late_then_plain, "credit": ["grpo"]})
        Recipe.from_dict({"selection": late_then_plain[::-1], "credit": ["grpo"]})  # the right order builds
    finally:
        REGISTRY["selection"].pop("test_keep_all", None)


@pytest.mark.realdata
def test_gated_example_recipe_runs_on_tau2(tau2_rollouts):

    from stepcredit.estimators import grpo, toolpo

    recipe = Recipe.load(str(Path(__file__).resolve().parents[1] / "configs" / "recipes" / "tau2_gated.yaml"))
    assert [s.name for s in recipe.selection] == ["rubric_gate", "resample_on_correct"]
    result = recipe.run(tau2_rollouts)
    r = result.rollouts
    assert 0 < r.num_trajectories < tau2_rollouts.num_trajectories
    sizes = torch.bincount(r.group)
    assert int(sizes.max()) <= 4
    # rubric: every kept trajectory ends with a non-blank answer
    last = r.step_offsets[1:] - 1
    assert bool((r.kind[last] == 2).all())
    # no confidence tags in tau2: every trajectory scores c − 1, so Brier adds 0.5 · (c − mean_g c)
    want = grpo(r).trajectory + 0.5 * toolpo(r).trajectory + 0.5 * grpo(r, norm="mean").trajectory
    assert torch.allclose(result.credit.trajectory, want, atol=1e-6)
    assert torch.equal(result.credit.call, 0.5 * toolpo(r).call)
    assert torch.equal(recipe.run(tau2_rollouts).kept, result.kept)  # seeded


# ------------------------------------------------------------------- hostile input
def test_yaml_billion_laughs_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}]"
        for i in range(1, 10)
    ]
    lines.append("credit: [{grpo: {norm: *a9}}]")
    (tmp_path / "laughs.yaml").write_text("\n".join(lines))
    with pytest.raises(RecipeError, match="alias") as info:
        Recipe.load(str(tmp_path / "laughs.yaml"))
    assert len(str(info.value)) < 500


def test_deeply_nested_yaml(tmp_path):
    (tmp_path / "deep.yaml").write_text("credit: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(RecipeError, match="nested too deeply"):
        Recipe.load(str(tmp_path / "deep.yaml"))


def test_recipe_that_is_not_utf8(tmp_path):
    (tmp_path / "r.yaml").write_bytes(b"credit: [grpo]\n# \xff\xfe\n")
    with pytest.raises(RecipeError, match="UTF-8"):
        Recipe.load(str(tmp_path / "r.yaml"))


def test_huge_integers_in_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("credit: [{grpo: {eps: " + "9" * 5000 + "}}]\n")
    with pytest.raises(RecipeError) as info:
        Recipe.load(str(tmp_path / "r.yaml"))
    assert len(str(info.value)) < 500


@pytest.mark.parametrize(
    "weights",
    [[float("nan")], [float("inf")], [1e308, 1e308]],
)
def test_non_finite_recipe_weights(weights):
    if len(weights) == 1:
        with pytest.raises(RecipeError, match="finite"):
            Recipe.load({"credit": [{"grpo": {"weight": weights[0]}}]})
        return
    recipe = Recipe.load({"credit": [{"grpo": {"weight": w}} for w in weights]})
    with pytest.raises(ValueError, match="not finite"):  # the final credit is checked, not only the parts
        recipe.run(make_rollouts(4, 4, seed=0))


def test_recipes_that_name_user_code_need_an_opt_in():
    spec = {"credit": [{"toolpo": {"correct": "os:getcwd"}}]}
    with pytest.raises(RecipeError, match="allow_imports"):
        Recipe.load(spec)
    assert Recipe.load(spec, allow_imports=True).credit[0].params["correct"] == "os:getcwd"
    for spec in (
        {"shaping": [{"prm_mix": {"scorer": "os:getcwd"}}], "credit": ["grpo"]},
        {"selection": [{"rubric_gate": {"rubrics": ["no_tool_errors", "os:getcwd"]}}], "credit": ["grpo"]},
    ):
        with pytest.raises(RecipeError, match="allow_imports"):
            Recipe.load(spec)
    Recipe.load({"selection": [{"rubric_gate": {"rubrics": ["no_tool_errors"]}}], "credit": ["grpo"]})  # built-in


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1: a\nx: b\ncredit: [grpo]\n", "unknown stage"),  # keys of mixed types
        ("description: !!timestamp x\ncredit: [grpo]\n", "cannot read recipe"),  # a malformed explicit tag
        ("shaping: [expert_similarity]\ncredit: [grpo]\n", "needs experts"),  # a required parameter left out
    ],
)
def test_recipe_files_found_by_fuzzing(tmp_path, text, fragment):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match=fragment):
        Recipe.load(str(tmp_path / "r.yaml"))
