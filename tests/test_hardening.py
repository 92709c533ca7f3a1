"""Recipes, numerics at the edges, outputs and the command line under hostile or odd input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stepcredit import Recipe, RecipeError, RolloutError, Rollouts, grpo, resample_on_correct
from stepcredit.envs import make_rollouts
from stepcredit.io import write_chat_jsonl
from stepcredit.rollouts import Texts, observation_states


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepcredit.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def one_line_exit_2(res: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert fragment in res.stderr, res.stderr


# -------------------------------------------------------------------------------------------- recipes
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


def test_expert_file_that_is_not_utf8(tmp_path):
    from stepcredit import expert_similarity

    (tmp_path / "experts.json").write_bytes(b'{"g": ["\xff"]}')
    with pytest.raises(RolloutError, match="UTF-8"):
        expert_similarity(make_rollouts(2, 2, seed=0), experts=str(tmp_path / "experts.json"))


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


def test_cli_refuses_user_code_without_allow_imports(tmp_path):
    log = tmp_path / "log.jsonl"
    write_chat_jsonl(make_rollouts(2, 2, seed=0), log)
    (tmp_path / "r.yaml").write_text("credit: [{toolpo: {correct: 'os:getcwd'}}]\n")
    one_line_exit_2(
        run("credit", str(log), "-r", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "c.jsonl")), "--allow-imports"
    )
    assert "--allow-imports" in run("credit", "--help").stdout


def test_a_folder_named_like_a_builtin_recipe_does_not_shadow_it(tmp_path):
    (tmp_path / "grpo").mkdir()
    log = tmp_path / "log.jsonl"
    write_chat_jsonl(make_rollouts(2, 2, seed=0), log)
    res = run("credit", str(log), "-r", "grpo", "-o", str(tmp_path / "c.jsonl"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert Recipe.load("grpo").name == "grpo"


@pytest.mark.parametrize("seed", [10**22, -1])
def test_seeds_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        resample_on_correct(make_rollouts(2, 4, seed=0), seed=seed)


def test_keep_out_of_range():
    with pytest.raises(ValueError, match="keep"):
        resample_on_correct(make_rollouts(2, 4, seed=0), keep=10**22)


# ------------------------------------------------------------------------------------------ numerics
def batch(outcomes: list[float], group: list[int] | None = None) -> Rollouts:
    n = len(outcomes)
    g = group or [0] * n
    return Rollouts(group=g, outcome=outcomes, step_offsets=list(range(n + 1)), texts=Texts.create(n, max(g) + 1, n, 0))


@pytest.mark.parametrize("scale", [1.0, 1e10, 2e19, 1e30, 3e38])
def test_grpo_at_large_magnitudes(scale):
    adv = grpo(batch([scale, -scale])).trajectory
    assert torch.isfinite(adv).all()
    assert adv.tolist() == pytest.approx([0.7071067, -0.7071067], rel=1e-5)  # (x - mean) / std, n = 2


def test_constant_group_within_tolerance_is_exactly_zero():
    # equal in exact arithmetic, one ulp apart after summing in another order
    x, y, z = (torch.tensor(v, dtype=torch.float32) for v in (0.1, 0.2, 0.05))
    a, b = (x + y) + z, x + (y + z)
    assert a.item() != b.item()  # 0.35000002 and 0.34999999
    assert grpo(batch([a.item(), b.item(), b.item()])).trajectory.tolist() == [0.0, 0.0, 0.0]
    # a real difference, however small relative to the tolerance's scale, is kept
    assert grpo(batch([0.3, 0.3001, 0.3])).trajectory.abs().max() > 0.5


def test_gigpo_similarity_matches_verl_agent_on_long_observations():
    # verl-agent's are_similar(new, representative): difflib.SequenceMatcher(None, a, b).ratio() with
    # Python's default autojunk, which treats characters frequent in b (len >= 200) as junk
    import difflib

    reset = (
        "-= Welcome to TextWorld, ALFRED! =- You are in the middle of a room. Looking quickly around you, you see "
        "a cabinet 4, a cabinet 3, a cabinet 2, a cabinet 1, a coffeemachine 1, a countertop 1, a diningtable 3, "
        "a diningtable 2, a diningtable 1, a drawer 1, a fridge 1, a garbagecan 1, a microwave 1, a sidetable 1, "
        "a sinkbasin 1, a stoveburner 4, a stoveburner 3, a stoveburner 2, a stoveburner 1, and a toaster 1. "
        "Your task is to: put a clean lettuce in diningtable."
    )
    other = reset.replace("a fridge 1, ", "a fridge 1, a fridge 2, ")
    reference = difflib.SequenceMatcher(None, other, reset).ratio()
    assert reference < 0.9 < difflib.SequenceMatcher(None, other, reset, autojunk=False).ratio()
    r = Rollouts(
        group=[0, 0], outcome=[1.0, 0.0], step_offsets=[0, 1, 2], texts=Texts.create(2, 1, 2, 0, prompt=[reset, other])
    )
    keys = observation_states(r, similarity=0.9)
    assert keys[0] != keys[1]  # kept apart, as verl-agent does
    assert observation_states(r, similarity=0.5)[1] == keys[0]  # reference ratio 0.59 >= 0.5: merged


# ---------------------------------------------------------------------------------- outputs and CLI
@pytest.fixture
def log(tmp_path) -> Path:
    path = tmp_path / "log.jsonl"
    write_chat_jsonl(make_rollouts(3, 2, seed=0), path)
    return path


def test_output_never_overwrites_an_input(log):
    before = log.read_bytes()
    one_line_exit_2(run("credit", str(log), "-o", str(log)), "input")
    one_line_exit_2(run("convert", str(log), "-o", str(log)), "input")
    one_line_exit_2(run("audit", str(log), "-o", str(log)), "input")
    assert log.read_bytes() == before


def test_output_into_a_missing_folder_or_onto_a_folder(log, tmp_path):
    one_line_exit_2(run("credit", str(log), "-o", str(tmp_path / "missing" / "c.jsonl")), "folder")
    one_line_exit_2(run("credit", str(log), "-o", str(tmp_path)), "folder")


def test_writes_are_atomic(tmp_path, monkeypatch):
    import stepcredit.io._chat as chat

    out = tmp_path / "c.jsonl"
    out.write_text("previous\n")
    real, calls = chat.json.dumps, []

    def interrupted(*args, **kwargs):  # the run is stopped while the third record is written
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chat.json, "dumps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_chat_jsonl(make_rollouts(3, 2, seed=0), out)
    assert out.read_text() == "previous\n"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]  # no torn temp file left


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--bootstrap", "-5"], "--bootstrap"),
        (["--bootstrap", "100000000"], "--bootstrap"),
        (["--seed", str(10**22)], "--seed"),
    ],
)
def test_audit_numbers_out_of_range(log, args, fragment):
    res = run("audit", str(log), *args)
    assert res.returncode == 2 and fragment in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [["--groups", "0"], ["--group-size", "0"], ["--seed", str(10**22)]])
def test_demo_numbers_out_of_range(args):
    res = run("demo", *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_error_json_output_is_valid_json(log, tmp_path):
    res = run("credit", str(log), "-o", str(tmp_path / "c.jsonl"))
    assert res.returncode == 0
    for line in (tmp_path / "c.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN / Infinity


def test_rollout_error_is_raised_for_unbounded_values_in_python_too():
    with pytest.raises(RolloutError):
        Rollouts(group=[0], outcome=[float("inf")], step_offsets=[0, 0], texts=Texts.create(1, 1, 0, 0))


# ------------------------------------------------------------------- found by the fuzz suite (tests/fuzz)
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


def test_messages_stay_one_bounded_line():
    with pytest.raises(RecipeError) as info:
        Recipe.load({"name": "x" * 1200, "credit": ["nope"]})
    assert len(str(info.value)) <= 600
    err = RolloutError("a\nb " * 500, trajectory="t" * 5000, group="g\n" * 100, source="s" * 2000, field="f")
    assert "\n" not in str(err) and len(str(err)) < 1200
    assert err.trajectory == "t" * 5000  # the attributes keep the full values


def test_output_inside_an_input_folder(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_chat_jsonl(make_rollouts(2, 2, seed=0), logs / "a.jsonl")
    one_line_exit_2(run("credit", str(logs), "-o", str(logs / "credit.jsonl")), "inside the input folder")
    assert run("credit", str(logs), "-o", str(tmp_path / "credit.jsonl")).returncode == 0
