"""The command line, run as a user runs it (``tests.support.cli.run``: exit codes, stdout and stderr apart;
in this process, and as a process where only a process shows it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepcredit import Recipe, RolloutError
from stepcredit.envs import make_rollouts
from stepcredit.io import write_chat_jsonl
from tests.support.cli import one_line_exit_2, run


def test_the_command_runs_as_a_process(tmp_path):
    """``python -m stepcredit.cli``: help, a command's output, and bad input as one line with exit 2."""
    out = run("--help", process=True)
    assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
    log = tmp_path / "log.jsonl"
    write_chat_jsonl(make_rollouts(2, 2, seed=0), log)
    out = run("credit", str(log), "-r", "grpo", "-o", str(tmp_path / "credit.jsonl"), process=True)
    assert out.returncode == 0 and (tmp_path / "credit.jsonl").is_file(), out.stderr
    one_line_exit_2(run("credit", str(log), "-r", "no_such_recipe", "-o", str(tmp_path / "c2.jsonl"), process=True),
                    "unknown recipe")


def test_help_on_every_command():
    for args in ([], ["inspect"], ["convert"], ["credit"], ["recipes"], ["demo"], ["rollouts"], ["experiment"]):
        out = run(*args, "--help")
        assert out.returncode == 0, out.stderr
        assert "Usage" in out.stdout


@pytest.mark.realdata
def test_inspect_tau2_json(tau2_dir):
    out = run("inspect", str(tau2_dir), "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert (s["trajectories"], s["groups"], s["successes"]) == (279, 50, 162)
    assert s["call_labels"]["failure"]["+1"] == 286


@pytest.mark.realdata
def test_inspect_tau2_table(tau2_dir):
    out = run("inspect", str(tau2_dir), "--format", "tau2")
    assert out.returncode == 0, out.stderr
    assert "279" in out.stdout and "162 (58.1%" in out.stdout and "31 mixed" in out.stdout


def test_inspect_bad_record_one_line_exit_2(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "x", "group": "g", "reward": NaN, "messages": []}\n')
    out = run("inspect", str(p))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "trajectory 'x'" in lines[0] and "'reward'" in lines[0]


def test_inspect_unknown_format_and_missing_path(tmp_path):
    assert run("inspect", str(tmp_path), "--format", "csv").returncode == 2
    out = run("inspect", str(tmp_path / "missing"))
    assert out.returncode == 2 and "no such file" in out.stderr


def test_convert_and_inspect_round_trip(tmp_path):
    from stepcredit.io import write_chat_jsonl

    src = tmp_path / "s.jsonl"
    write_chat_jsonl(make_rollouts(4, 3, seed=1), src)
    for name in ("s.parquet", "t.jsonl"):
        out = run("convert", str(src), "-o", str(tmp_path / name))
        assert out.returncode == 0, out.stderr
    a = json.loads(run("inspect", str(src), "--json").stdout)
    b = json.loads(run("inspect", str(tmp_path / "s.parquet"), "--json").stdout)
    assert a == b and a["trajectories"] == 12
    assert run("convert", str(src), "-o", str(tmp_path / "x.csv")).returncode == 2


def test_chat_field_options(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"task": "t", "score": {"v": 1}, "traj": [{"role": "assistant", "content": "x"}]}) + "\n")
    out = run(
        "inspect", str(p), "--group-field", "task", "--reward-field", "score.v", "--messages-field", "traj", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["successes"] == 1


def test_id_field_builds_ids_from_fields(tmp_path):
    msgs = [{"role": "assistant", "content": "x"}]
    p = tmp_path / "c.jsonl"
    p.write_text(
        "".join(
            json.dumps({"task_id": t, "trial": k, "group": t, "reward": 1, "messages": msgs}) + "\n"
            for t in ("a", "b")
            for k in (0, 1)
        )
    )
    out = tmp_path / "credit.jsonl"
    res = run("credit", str(p), "--id-field", "task_id,trial", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a:0", "a:1", "b:0", "b:1"]
    res = run("inspect", str(p), "--id-field", "task_id,attempt")
    assert res.returncode == 2 and "field 'attempt'" in res.stderr


def test_help_and_recipes_print_as_written():
    assert "<bool>" not in run("inspect", "--help").stdout  # flags are flags
    listing = " ".join(run("recipes").stdout.split())
    assert "inspect._empty" not in listing and "_empty" not in listing and "experts" in listing


def test_brackets_in_errors_and_help_are_printed_as_written(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"id": "[bold]x[/bold]", "group": "g", "reward": "[1]", "messages": []}) + "\n")
    res = run("inspect", str(p))
    assert res.returncode == 2 and "'[bold]x[/bold]'" in res.stderr and "'[1]'" in res.stderr
    assert "JSON {group: [reference actions]}" in " ".join(run("audit", "--help").stdout.split())


def test_demo_runs():
    out = run("demo", "--groups", "4", "--group-size", "3")
    assert out.returncode == 0, out.stderr
    assert "synthetic" in out.stdout and "12" in out.stdout


@pytest.mark.realdata
def test_credit_on_tau2_round_trips(tau2_dir, tmp_path):
    from stepcredit.estimators import grpo
    from stepcredit.io import load, read_credit_jsonl

    out = tmp_path / "credit.jsonl"
    res = run("credit", str(tau2_dir), "--recipe", "grpo", "-o", str(out))
    assert res.returncode == 0, res.stderr
    records = read_credit_jsonl(out)
    r = load(tau2_dir)
    credit = grpo(r)
    assert [rec["id"] for rec in records] == r.texts.ids.to_pylist()
    steps = [s["credit"] for rec in records for s in rec["steps"]]
    calls = [c["credit"] for rec in records for s in rec["steps"] for c in s["calls"]]
    assert steps == credit.per_step(r).tolist()
    assert calls == credit.per_call(r).tolist()
    assert [rec["credit"]["trajectory"] for rec in records] == credit.trajectory.tolist()
    assert records[0]["recipe"] == "grpo" and "action" in records[0]["steps"][0]


def test_credit_with_yaml_recipe_and_errors(tmp_path):
    from stepcredit.io import write_chat_jsonl

    src = tmp_path / "s.jsonl"
    write_chat_jsonl(make_rollouts(4, 3, seed=1), src)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("credit:\n  - grpo: {norm: mean}\n  - rloo: {weight: 0.5}\n")
    out = run("credit", str(src), "--recipe", str(recipe), "-o", str(tmp_path / "c.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "credited 12 of 12" in out.stdout
    bad = run("credit", str(src), "--recipe", "nope", "-o", str(tmp_path / "c.jsonl"))
    assert bad.returncode == 2 and "unknown recipe 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    recipe.write_text("credit:\n  - grpo: {norm: max}\n")
    bad = run("credit", str(src), "--recipe", str(recipe))
    assert bad.returncode == 2 and "grpo.norm must be" in bad.stderr


def test_recipes_lists_builtins_and_components():
    out = run("recipes")
    assert out.returncode == 0, out.stderr
    for name in ("grpo", "dr_grpo", "rloo", "ms_grpo", "abs_adv_sampling"):
        assert name in out.stdout


@pytest.mark.realdata
@pytest.mark.parametrize("recipe", ["action_anchor", "toolpo", "gigpo", "tree_grpo", "mt_grpo", "treerl"])
def test_structural_recipes_run_on_tau2(tau2_dir, tmp_path, recipe):
    from stepcredit.io import read_credit_jsonl

    out = tmp_path / f"{recipe}.jsonl"
    res = run("credit", str(tau2_dir), "--recipe", recipe, "-o", str(out))
    assert res.returncode == 0, res.stderr
    records = read_credit_jsonl(out)
    assert len(records) == 279
    calls = [c["credit"] for rec in records for s in rec["steps"] for c in s["calls"]]
    assert len(calls) == 2832 and all(isinstance(x, float) for x in calls)


def test_read_credit_jsonl_rejects_other_records(tmp_path):
    from stepcredit.io import read_credit_jsonl

    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "x", "steps": []}\n')
    with pytest.raises(RolloutError, match="not a credit record"):
        read_credit_jsonl(p)
    p.write_text('{"id": "x", "credit": {}, "steps": [\n')
    with pytest.raises(RolloutError, match=r"c\.jsonl:1: invalid JSON"):
        read_credit_jsonl(p)


def test_recipe_that_does_not_fit_the_data_is_one_line(tmp_path):
    from stepcredit.io import write_chat_jsonl

    src = tmp_path / "s.jsonl"
    write_chat_jsonl(make_rollouts(2, 2, seed=1), src)
    recipe = tmp_path / "prm.yaml"
    recipe.write_text("credit:\n  - prm_step: {beta: 0.5}\n")
    out = run("credit", str(src), "--recipe", str(recipe))
    assert out.returncode == 2 and "prm_step needs PRM scores" in out.stderr and "Traceback" not in out.stderr


def test_demo_judges_shaped_recipes_by_logged_outcomes():
    out = run("demo", "--groups", "8", "--group-size", "4")
    row = next(line for line in out.stdout.splitlines() if "rlcr" in line)
    grpo_row = next(line for line in out.stdout.splitlines() if "│ grpo " in line)
    # the same +1 calls in failed runs are counted for rlcr as for grpo
    assert row.split("│")[4].strip() == grpo_row.split("│")[4].strip()


# ------------------------------------------------------------------- hostile input
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


def test_output_inside_an_input_folder(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_chat_jsonl(make_rollouts(2, 2, seed=0), logs / "a.jsonl")
    one_line_exit_2(run("credit", str(logs), "-o", str(logs / "credit.jsonl")), "inside the input folder")
    assert run("credit", str(logs), "-o", str(tmp_path / "credit.jsonl")).returncode == 0
