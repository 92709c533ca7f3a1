"""``stepcredit rollouts``: play a policy on a family, write Parquet / chat JSONL, audit it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepcredit import load
from stepcredit.envs import env_factory
from stepcredit.generation import rollout_trees, scripted_policy
from tests.support.cli import run


def test_rollouts_chains_to_parquet_then_audit(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    args = ["--env", "calculator", "--policy", "noisy", "--groups", "6", "--group-size", "4"]
    done = run("rollouts", *args, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 24 trajectories of 6 tasks" in done.stdout
    r = load(out)
    assert r.num_trajectories == 24 and r.label is not None
    report = tmp_path / "a.html"
    recipes = ["--recipes", "grpo,call_consensus"]
    audited = run("audit", str(out), "--json", *recipes, "-o", str(report), "--bootstrap", "9")
    assert audited.returncode == 0, audited.stderr
    assert set(json.loads(audited.stdout)["recipes"]) == {"grpo", "call_consensus"}


def test_rollouts_trees_match_the_library_call(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    args = ["--env", "calculator", "--policy", "systematic", "--groups", "3", "--tree", "2,2,1", "--seed", "5"]
    done = run("rollouts", *args, "--split", "test", "-o", str(out))
    assert done.returncode == 0, done.stderr
    batch = rollout_trees(
        env_factory("calculator", split="test"), scripted_policy("systematic", seed=5), range(3),
        trees=2, expand=2, iterations=1, seed=5,
    )
    assert load(out).equals(batch.rollouts)


def test_rollouts_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    done = run("rollouts", "--policy", "oracle", "--groups", "2", "--group-size", "2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "chess"], "unknown environment"),
        (["--policy", "genius"], "--policy must be"),
        (["--tree", "2,2"], "--tree expects M,N,L"),
        (["--split", "dev"], "--split must be"),
        (["-o", "out.csv"], "expected a .parquet or .jsonl"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = run("rollouts", "--groups", "1", "-o", str(tmp_path / "x.parquet"), *args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_rollouts_with_a_model_folder(tmp_path: Path) -> None:
    from stepcredit.generation.tiny import tiny_policy

    tiny_policy(("calculator",), hidden_size=32, num_layers=1).save_pretrained(tmp_path / "model")
    out = tmp_path / "hf.parquet"
    args = ["--policy", str(tmp_path / "model"), "--groups", "2", "--group-size", "2", "--max-new-tokens", "6"]
    done = run("rollouts", *args, "--depth", "1", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "generated tokens per trajectory" in done.stdout
    r = load(out)
    assert r.num_trajectories == 4 and r.response_mask is not None and bool(r.response_mask.any())
