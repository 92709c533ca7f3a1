"""``stepcredit rollouts``: play a policy on a family, write Parquet / chat JSONL, audit it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from stepcredit import load
from stepcredit.envs import env_factory
from stepcredit.generation import rollout_chains, rollout_trees, scripted_policy
from tests.support.cli import one_line_exit_2, run


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
        (["--tree", "1000,1000,100"], "leaves per task; at most 10000"),
        (["--first-task", str(2**31 - 1), "--groups", "5"], "passes the last task index"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = run("rollouts", "--groups", "1", "-o", str(tmp_path / "x.parquet"), *args)
    assert not (tmp_path / "x.parquet").exists()
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


def _blocks(monkeypatch: pytest.MonkeyPatch, trajectories: int) -> list[int]:
    """Make ``rollouts`` play ``trajectories`` per block; the groups of each block played, in order."""
    import stepcredit.cli as cli
    import stepcredit.generation as generation

    monkeypatch.setattr(cli, "BLOCK_TRAJECTORIES", trajectories)
    sizes: list[int] = []
    real = generation.rollout_chains

    def spy(make_env: Any, policy: Any, tasks: Any, **kw: Any) -> Any:
        sizes.append(len(tasks))
        return real(make_env, policy, tasks, **kw)

    monkeypatch.setattr(generation, "rollout_chains", spy)
    return sizes


def test_rollouts_are_played_and_written_in_bounded_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _blocks(monkeypatch, 8)
    out = tmp_path / "r.parquet"
    done = run("rollouts", "--policy", "noisy", "--groups", "7", "--group-size", "3", "--seed", "4", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sizes == [2, 2, 2, 1]  # 8 // 3 = 2 groups a block: no more is held at a time
    r = load(out)
    assert r.num_trajectories == 21 and r.num_groups == 7 and len(set(r.texts.ids.to_pylist())) == 21
    first = rollout_chains(env_factory("calculator"), scripted_policy("noisy", seed=4), range(2), group_size=3,
                           seed=4)
    assert r.select(torch.arange(6)).equals(first.rollouts)  # the first block is the library call under --seed
    jsonl = tmp_path / "r.jsonl"
    assert run("rollouts", "--groups", "7", "--group-size", "3", "-o", str(jsonl)).returncode == 0
    assert len(jsonl.read_text().splitlines()) == 21


def test_model_rollouts_in_blocks_keep_the_longest_response(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stepcredit.generation.tiny import tiny_policy

    tiny_policy(("calculator",), hidden_size=32, num_layers=1).save_pretrained(tmp_path / "model")
    _blocks(monkeypatch, 2)
    out = tmp_path / "hf.parquet"
    args = ["--policy", str(tmp_path / "model"), "--groups", "3", "--group-size", "2", "--max-new-tokens", "6"]
    done = run("rollouts", *args, "--depth", "1", "-o", str(out))
    assert done.returncode == 0, done.stderr
    r = load(out)
    assert r.num_trajectories == 6 and r.response_mask is not None
    positions = torch.arange(1, r.response_mask.shape[1] + 1) * r.response_mask.bool()
    assert int(positions.max()) == r.response_mask.shape[1]  # padded to the longest response of all blocks
    one_line_exit_2(run("rollouts", *args, "--top-p", "0", "-o", str(tmp_path / "p.parquet")), "--top-p must be")
