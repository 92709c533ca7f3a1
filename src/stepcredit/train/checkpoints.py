"""A run folder's checkpoints and the manifest that lets a resume check them.

A run folder holds ``config.json`` (the run's ``TrainConfig``), ``manifest.json`` and
``checkpoint-<step>.pt``. The manifest records the config's digest (``TrainConfig.digest``: everything
but ``steps``) and, per checkpoint, its step and the sha256 of its bytes. ``resume_point`` checks a
folder against a config before anything is written: the manifest and the config must be there and
agree with the config given, and the newest checkpoint whose bytes match the manifest and that loads
as plain tensors and values (``torch.load(weights_only=True)``: a checkpoint cannot run code) is the
one resumed from; a damaged newer one is skipped with a warning. A fresh run refuses a folder that
already holds anything unless told to overwrite it (``clear_run``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from stepcredit.core.errors import show
from stepcredit.io.atomic import atomic_write
from stepcredit.train.config import TrainConfig

__all__ = [
    "MANIFEST",
    "ResumePoint",
    "adopt_checkpoints",
    "clear_run",
    "load_checkpoint",
    "resume_point",
    "save_checkpoint",
    "start_run",
]

MANIFEST = "manifest.json"
FORMAT = 1
# what a run writes into its folder (``clear_run`` removes exactly these)
_OURS = ("config.json", MANIFEST, "metrics.jsonl", "skills.json", "last_rollouts.parquet")


@dataclass
class ResumePoint:
    """Where a run starts: ``state`` None for a fresh start, else the loaded checkpoint of ``step``;
    ``reference``: the model weights of the step-0 checkpoint, checked like the rest (the KL reference
    of a run with ``kl_coef > 0``); ``adopt``: manifest entries ``(step, file, sha256)`` to record for a
    run folder from before manifests; ``warnings``: what was skipped."""

    state: dict[str, Any] | None = None
    step: int = 0
    reference: dict[str, Any] | None = None
    adopt: list[tuple[int, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the manifest ({type(exc).__name__}); use --overwrite or a new "
                         "--out") from None
    entries = data.get("checkpoints") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("config"), str)
        or not isinstance(entries, list)
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("step"), int)
            and not isinstance(e.get("step"), bool)
            and isinstance(e.get("sha256"), str)
            and e.get("file") == f"checkpoint-{e.get('step')}.pt"
            for e in entries
        )
    ):
        raise ValueError(f"{path}: expected a manifest of format {FORMAT} (config digest, checkpoints with step, "
                         "file and sha256); use --overwrite or a new --out")
    return data


def _write_manifest(out: Path, data: dict[str, Any]) -> None:
    with atomic_write(out / MANIFEST) as f:
        json.dump(data, f, indent=1)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, loaded as tensors and plain values only (``weights_only=True``: no code
    runs; memory-mapped, so checking a large checkpoint reads little of it)."""
    state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    if not isinstance(state, dict) or not {"step", "model", "optimizer", "history", "counters"} <= set(state):
        raise ValueError("not a stepcredit checkpoint")
    return state


def _checkpoint_files(out: Path) -> list[tuple[int, str]]:
    found = []
    for p in out.glob("checkpoint-*.pt"):
        step = p.stem.split("-", 1)[1]
        if step.isdigit() and p.is_file():
            found.append((int(step), p.name))
    return sorted(found)


def _intact(out: Path, step: int, name: str, sha: str | None) -> tuple[dict[str, Any] | None, str, str | None]:
    """(the state, its sha256, None) of an intact checkpoint, else (None, "", what is wrong)."""
    path = out / name
    if not path.is_file():
        return None, "", "is missing"
    digest = _sha256(path)
    if sha is not None and digest != sha:
        return None, "", "does not match its sha256 in the manifest"
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # untrusted bytes may raise anything; weights_only runs no code
        return None, "", f"cannot be loaded ({type(exc).__name__})"
    if state["step"] != step:
        return None, "", f"holds step {show(state['step'])}, not {step}"
    return state, digest, None


def _changed(out: Path, config: TrainConfig) -> list[str]:
    try:
        saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return ["config.json (unreadable)"]
    now = config.to_dict()
    if not isinstance(saved, dict):
        return ["config.json (not a mapping)"]
    return sorted(k for k in set(saved) | set(now) if k != "steps" and saved.get(k) != now.get(k))


def _refuse(out: Path, why: str) -> NoReturn:
    raise ValueError(f"{out}: cannot resume, {why}; use --overwrite or a new --out")


def resume_point(config: TrainConfig, out: Path, *, resume: bool, overwrite: bool = False) -> ResumePoint:
    """Check the run folder ``out`` for a run of ``config`` and say where it starts; writes nothing.

    Fresh (``resume`` False): ``out`` must be absent or empty, unless ``overwrite``. Resume: a folder
    with nothing of a run in it, or a run cut off before its first checkpoint, starts afresh; otherwise
    ``config.json`` and the manifest must be there and match ``config`` (all but ``steps``), and the
    newest intact checkpoint the manifest vouches for is loaded (a damaged newer one is skipped with
    a warning). A folder from before manifests (``config.json`` and checkpoints, no manifest) is
    adopted when its ``config.json`` matches exactly: its checkpoints are checked by loading them. A
    run with ``kl_coef > 0`` also needs an intact step-0 checkpoint, its KL reference. ``ValueError``
    names the folder and what is wrong."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; expected a run folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not resume:
        if entries and not overwrite:
            shown = ", ".join(show(e) for e in entries[:3]) + (", …" if len(entries) > 3 else "")
            raise ValueError(f"{out}: already holds a run ({shown}); give --resume to continue it or --overwrite to "
                             "start it again")
        return ResumePoint()
    has_config, has_manifest = (out / "config.json").is_file(), (out / MANIFEST).is_file()
    files = _checkpoint_files(out) if out.is_dir() else []
    if not (has_config or has_manifest or files):
        return ResumePoint()  # nothing of a run here
    if not has_config:
        _refuse(out, "config.json is missing, so the checkpoints cannot be checked against this config")
    point = ResumePoint()
    candidates: list[tuple[int, str, str | None]]
    if has_manifest:
        manifest = _read_manifest(out)
        if manifest["config"] != config.digest():
            _refuse(out, f"the config differs from the checkpointed run's in "
                    f"{_changed(out, config) or ['(config.json does not match the manifest)']} (only steps may grow)")
        edited = _changed(out, config)
        if edited:
            _refuse(out, f"config.json differs from this config in {edited} although the manifest matches (was it "
                    "edited?)")
        candidates = sorted((e["step"], e["file"], e["sha256"]) for e in manifest["checkpoints"])
    else:
        changed = _changed(out, config)
        if changed:
            _refuse(out, f"the config differs from the checkpointed run's in {changed} (only steps may grow)")
        if files:
            point.warnings.append("no manifest.json (a run from before manifests): its checkpoints are checked by "
                                  "loading them and recorded in a new manifest")
        candidates = [(step, name, None) for step, name in files]
    if not candidates:
        return point  # cut off before its first checkpoint: start afresh
    for step, name, sha in reversed(candidates):
        state, digest, problem = _intact(out, step, name, sha)
        if problem is None:
            point.state, point.step = state, step
            if not has_manifest:
                point.adopt.append((step, name, digest))
            break
        point.warnings.append(f"{name} {problem}: skipped")
    else:
        _refuse(out, f"no intact checkpoint ({'; '.join(point.warnings)})")
    if config.kl_coef > 0 and point.step > 0:
        first = next(((s_, n, h) for s_, n, h in candidates if s_ == 0), None)
        reference, digest, problem = _intact(out, 0, first[1], first[2]) if first else (None, "", "is missing")
        if reference is None:
            _refuse(out, f"the run has kl_coef > 0 and its step-0 checkpoint (the KL reference) {problem}")
        point.reference = reference["model"]
        if not has_manifest:
            point.adopt.insert(0, (0, "checkpoint-0.pt", digest))
    return point


def adopt_checkpoints(out: Path, config: TrainConfig, entries: list[tuple[int, str, str]]) -> None:
    """The manifest of a run folder from before manifests, for the checkpoints ``resume_point`` checked."""
    _write_manifest(out, {"format": FORMAT, "config": config.digest(),
                          "checkpoints": [{"step": s, "file": f, "sha256": h} for s, f, h in entries]})


def clear_run(out: Path) -> None:
    """Remove what a run wrote into ``out`` (its config, manifest, metrics, checkpoints, bank, rollouts);
    anything else in the folder stays."""
    if not out.is_dir():
        return
    for path in out.iterdir():
        name = path.name
        ours = name in _OURS or (name.startswith("checkpoint-") and name.endswith(".pt"))
        if ours and path.is_file():
            path.unlink()


def start_run(out: Path, config: TrainConfig) -> None:
    """A fresh run's ``config.json`` and empty manifest."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.json") as f:
        json.dump(config.to_dict(), f, indent=1)
    _write_manifest(out, {"format": FORMAT, "config": config.digest(), "checkpoints": []})


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    """Write ``checkpoint-<step>.pt`` whole (temporary file, renamed) and record it in the manifest."""
    step = int(state["step"])
    path = out / f"checkpoint-{step}.pt"
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
    digest = _sha256(path)
    manifest = _read_manifest(out)
    entries = [e for e in manifest["checkpoints"] if e["step"] != step]
    manifest["checkpoints"] = [*entries, {"step": step, "file": path.name, "sha256": digest}]
    _write_manifest(out, manifest)
    return path
