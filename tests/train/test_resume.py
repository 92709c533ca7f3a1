"""Run folders that cannot lie: a fresh run refuses a used folder, a resume checks the manifest and the
config and falls back past damaged checkpoints, checkpoints never run code, divergence is an error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import stepcredit.train.loop as loop
from stepcredit.train.checkpoints import MANIFEST, load_checkpoint, resume_point
from stepcredit.train.config import TrainConfig
from stepcredit.train.experiment import Experiment, RunSpec, summarize_runs, summary_markdown
from stepcredit.train.loop import DivergenceError, train
from tests.support.cli import one_line_exit_2, run
from tests.support.train import TINY


def _config(**over: Any) -> TrainConfig:
    return TrainConfig(**{**TINY, "steps": 2, "checkpoint_every": 1, **over})


def _without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in history]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A run of two steps with a checkpoint after each, and its metrics."""
    out = tmp_path_factory.mktemp("run") / "a"
    return out, train(_config(), out, progress=False)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_a_fresh_run_refuses_a_used_folder_and_overwrite_clears_it(finished, tmp_path: Path) -> None:
    out = _copy(finished[0], tmp_path)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds a run .*--resume .*--overwrite"):
        train(_config(lr=5e-3), out, progress=False)
    train(_config(lr=5e-3, steps=1), out, progress=False, overwrite=True)
    assert not (out / "checkpoint-2.pt").exists()  # the earlier run's later checkpoint is gone
    assert (out / "notes.txt").read_text() == "mine"  # what the run did not write stays
    # a later resume continues the lr 5e-3 run, not the earlier lr 1e-3 one
    history = train(_config(lr=5e-3, steps=2), out, progress=False, resume=True)
    assert len(history) == 3 and json.loads((out / "config.json").read_text())["lr"] == 5e-3


def test_resume_refuses_without_config_json(finished, tmp_path: Path) -> None:
    out = _copy(finished[0], tmp_path)
    (out / "config.json").unlink()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(ValueError, match=r"config\.json is missing"):
        train(_config(steps=3), out, progress=False, resume=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing written


def test_a_run_from_before_manifests_is_adopted_when_its_config_matches(finished, tmp_path: Path) -> None:
    out = _copy(finished[0], tmp_path)
    (out / MANIFEST).unlink()
    point = resume_point(_config(), out, resume=True)
    assert point.step == 2 and "before manifests" in point.warnings[0] and [a[0] for a in point.adopt] == [2]
    with pytest.raises(ValueError, match=r"config differs .*\['lr'\]"):
        resume_point(_config(lr=0.5), out, resume=True)
    resumed = train(_config(steps=3), out, progress=False, resume=True)
    assert len(resumed) == 4 and json.loads((out / MANIFEST).read_text())["checkpoints"][0]["step"] == 2


def test_a_run_cut_off_before_its_first_checkpoint_starts_afresh(tmp_path: Path) -> None:
    from stepcredit.train.checkpoints import start_run

    out = tmp_path / "cut"
    start_run(out, _config())  # config.json and an empty manifest, then the process died
    assert resume_point(_config(), out, resume=True).state is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    assert resume_point(_config(), tmp_path / "other", resume=True).state is None  # nothing of a run there


def test_a_kl_run_needs_its_intact_reference_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "kl"
    train(_config(kl_coef=0.1), out, progress=False)
    assert resume_point(_config(kl_coef=0.1), out, resume=True).reference is not None
    (out / "checkpoint-0.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="its step-0 checkpoint \\(the KL reference\\) does not match its sha256"):
        resume_point(_config(kl_coef=0.1), out, resume=True)


def test_resume_refuses_a_changed_config_and_writes_nothing(finished, tmp_path: Path) -> None:
    out = _copy(finished[0], tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"config differs .*\['lr'\]"):
        train(_config(lr=0.5, steps=3), out, progress=False, resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(2000))


@pytest.mark.parametrize("damage", [_truncate, _garbage, Path.unlink])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(damage: Any, finished, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out, full = finished
    out = _copy(out, tmp_path)
    damage(out / "checkpoint-2.pt")
    point = resume_point(_config(), out, resume=True)
    assert point.step == 1 and "checkpoint-2.pt" in point.warnings[0]
    resumed = train(_config(), out, progress=True, resume=True)
    assert _without_times(resumed) == _without_times(full)  # step 2 is retrained, exactly
    assert "checkpoint-2.pt" in capsys.readouterr().err


def test_a_checkpoint_from_another_run_is_not_resumed(finished, tmp_path: Path) -> None:
    out = _copy(finished[0], tmp_path)
    other = tmp_path / "other"
    train(_config(seed=1, steps=1), other, progress=False)
    shutil.copy(other / "checkpoint-1.pt", out / "checkpoint-2.pt")  # swapped in
    assert resume_point(_config(), out, resume=True).step == 1


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {os.environ['STEPCREDIT_PAYLOAD_MARK']}",))


def test_a_crafted_checkpoint_runs_no_code(finished, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy(finished[0], tmp_path)
    mark = tmp_path / "payload-ran"
    monkeypatch.setenv("STEPCREDIT_PAYLOAD_MARK", str(mark))
    evil = out / "checkpoint-2.pt"
    state = torch.load(evil, weights_only=True)
    state["history"] = _Payload()
    torch.save(state, evil)
    manifest = json.loads((out / MANIFEST).read_text())  # the attacker also fixes the manifest
    import hashlib

    manifest["checkpoints"][-1]["sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises, the payload must not run
        load_checkpoint(evil)
    point = resume_point(_config(), out, resume=True)
    assert point.step == 1 and "cannot be loaded" in point.warnings[0]
    assert not mark.exists()


def test_divergence_stops_the_run_naming_step_and_quantity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.ppo_clip_loss, []

    def nan_from_the_second_call(*args: Any, **kwargs: Any) -> Any:  # one update per step here
        loss, metrics = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 1 else loss), metrics

    monkeypatch.setattr(loop, "ppo_clip_loss", nan_from_the_second_call)
    with pytest.raises(DivergenceError, match="diverged at step 2: the loss is not finite") as err:
        train(_config(), tmp_path / "d", progress=False)
    last = err.value.history[-1]
    assert err.value.step == 2 and last["step"] == 2 and last["diverged"] == "the loss"
    assert not (tmp_path / "d" / "checkpoint-2.pt").exists()  # the diverged step is never saved
    rows = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["diverged"] == "the loss"
    exp = Experiment("x", _config(), [RunSpec("grpo", "grpo")])
    summary = summarize_runs(exp, {"grpo": [err.value.history]})
    assert summary["runs"]["grpo"]["diverged"] == ["step 2: the loss"]
    assert "step 2: the loss" in summary_markdown(summary)


def test_a_diverged_warm_start_is_refused(tmp_path: Path) -> None:
    config = _config()
    policy = loop.build_policy(config)
    state = {k: v.clone() for k, v in policy.model.state_dict().items()}
    for v in state.values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="step 0: a weight of init_state"):
        train(config, tmp_path / "w", progress=False, init_state=state)


def test_a_refused_experiment_resume_leaves_experiment_json(tmp_path: Path) -> None:
    spec = {"name": "r", "seeds": [0], "train": {**TINY, "steps": 1}, "runs": [{"recipe": "grpo"}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run("experiment", str(path), "--out", str(tmp_path), "--quiet").returncode == 0
    one_line_exit_2(run("experiment", str(path), "--out", str(tmp_path), "--quiet"), "already holds a run")
    before = (tmp_path / "r" / "experiment.json").read_bytes()
    spec["train"]["lr"] = 0.5
    path.write_text(yaml.safe_dump(spec))
    one_line_exit_2(run("experiment", str(path), "--out", str(tmp_path), "--quiet", "--resume"), "['lr']")
    assert (tmp_path / "r" / "experiment.json").read_bytes() == before
