"""``stepcredit experiment``: recipes × seeds on one environment family, compared end to end.

For every seed the policy is warm-started once (SFT on noisy-oracle demonstrations) and every run of
that seed starts from the same weights, so runs differ only by their credit (and rollout shape) — except
runs whose warm start itself differs (``WARM_FIELDS``, or ``skills``, whose demonstrations carry the
skill bank): each such setting is warm-started once per seed. Each
run is a ``train`` call; the experiment writes ``<out>/<name>/``:

* ``<run>-seed<k>/``: the run's ``config.json``, ``manifest.json``, ``metrics.jsonl``, checkpoints,
  ``last_rollouts.parquet``;
* ``curves.png``: held-out success vs rollouts and vs generated tokens (mean over seeds, min–max band);
* ``audit.json``: the credit audit of the last rollouts of the baseline run (labels from the env);
* ``summary.json`` / ``summary.md``: per run, final success, rollouts to reach outcome-GRPO's final
  success and a mid-level target, the share of the GRPO → oracle gap closed, collapses, divergences;
* ``report.html``: all of it in one self-contained page (images inlined).

A config is YAML (read safely; unknown keys are errors)::

    name: default
    seeds: [0]
    train: {env: calculator, depth: 3, steps: 30, ...}     # TrainConfig fields
    runs:
      - {name: grpo, recipe: grpo}
      - {name: tree_grpo, recipe: tree_grpo, rollout: trees}
      - {name: oracle, recipe: oracle}                      # the yardstick: reads labels
    stability: {lr_scale: 3.0, runs: [grpo, oracle]}         # optional: these runs again at 3× lr
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stepcredit.core.errors import show
from stepcredit.train.checkpoints import resume_point
from stepcredit.train.config import TrainConfig
from stepcredit.train.loop import DivergenceError, build_policy, train
from stepcredit.train.warmstart import warm_start

__all__ = [
    "DEFAULT_EXPERIMENT",
    "Experiment",
    "RunSpec",
    "check_name",
    "experiment_folder",
    "load_experiment",
    "run_experiment",
    "summarize_runs",
]


@dataclass
class RunSpec:
    """One curve of the experiment: a recipe (built-in name, YAML path, or the recipe itself inline as a
    mapping), its rollout shape, and any ``TrainConfig`` overrides."""

    name: str
    recipe: str | dict[str, Any]
    rollout: Literal["chains", "trees"] = "chains"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    train: TrainConfig
    runs: list[RunSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str = "grpo"  # the run whose final success is the target
    oracle: str = "oracle"  # the run that bounds what credit can do
    stability_lr_scale: float | None = None
    stability_runs: list[str] | None = None  # runs repeated at the scaled learning rate (None: all)


# The built-in default (``make run``): small enough for 2 CPU cores in ≤ 10 minutes.
DEFAULT_EXPERIMENT: dict[str, Any] = {
    "name": "default",
    "seeds": [0],
    "train": {
        "env": "calculator",
        "depth": 3,
        "env_options": {"shape": "chain", "max_operand": 9, "echo": True},
        "steps": 16,
        "groups_per_step": 16,
        "eval_every": 2,
        "eval_tasks": 64,
    },
    "runs": [
        {"name": "grpo", "recipe": "grpo"},
        {"name": "gigpo", "recipe": "gigpo"},
        {"name": "tree_grpo", "recipe": "tree_grpo", "rollout": "trees"},
        {"name": "call_consensus", "recipe": "call_consensus"},
        {"name": "oracle", "recipe": "oracle"},
    ],
}


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(allowed))
    if unknown:
        shown = ", ".join(show(k) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{where}: unknown key(s) [{shown}]; expected some of {sorted(allowed)}")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}")
MAX_SEEDS = 1000


def check_name(value: Any, where: str) -> str:
    """A name that becomes a folder: letters, digits and ``_ . + = -``, not starting with a dot or a
    dash, at most 100 characters — no separator, no ``..``, no absolute path."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{where} must be a name (letters, digits, _ . + = -; starting with a letter or digit; at "
                         f"most 100 characters), got {show(value)}")
    return value


def _finite_positive(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:  # an integer past float's range
        return False


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def load_experiment(spec: str | Path | Mapping[str, Any] | None = None) -> Experiment:
    """An experiment from a YAML file, a dict, or the built-in default (``None``), checked whole before
    anything runs: every key and value by type and range, names that are names, unique seeds, each
    run's config resolved (environment and options, recipe, model, device, sizes), the stability runs'
    scaled learning rate. ``ValueError`` naming the file and the field."""
    from stepcredit.recipe import read_yaml

    if spec is None:
        data: Any = DEFAULT_EXPERIMENT
        source = "the default experiment"
    elif isinstance(spec, Mapping):
        data, source = spec, "experiment"
    else:
        path = Path(spec)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the experiment ({type(exc).__name__})") from None
        data, source = read_yaml(text, str(path)), str(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping with name, train, runs")
    _check_keys(data, ("name", "seeds", "train", "runs", "baseline", "oracle", "stability"), source)
    name = check_name(data.get("name", "experiment"), f"{source}: name")
    base = dict(_mapping(data.get("train") or {}, f"{source}: train"))
    train_config = TrainConfig.parse(base, f"{source}: train")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    raw_runs = data.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise ValueError(f"{source}: runs must be a non-empty list of runs, got {show(raw_runs)}")
    runs = []
    for i, run in enumerate(raw_runs):
        where = f"{source}: runs[{i}]"
        if not isinstance(run, Mapping) or "recipe" not in run:
            raise ValueError(f"{where} must be a mapping with at least a recipe")
        _check_keys(run, ("name", "recipe", "rollout", *sorted(train_fields - {"recipe", "rollout", "seed"})), where)
        overrides = {k: v for k, v in run.items() if k not in ("name", "recipe", "rollout")}
        TrainConfig.check_fields(overrides, where)
        rollout = run.get("rollout", "chains")
        if rollout not in ("chains", "trees"):
            raise ValueError(f"{where}.rollout must be 'chains' or 'trees', got {show(rollout)}")
        recipe = run["recipe"]
        if isinstance(recipe, Mapping):  # inline: the run's name names the recipe too
            run_name = run.get("name", recipe.get("name"))
            if run_name is None:
                raise ValueError(f"{where} with an inline recipe needs a name")
            recipe = {**recipe, "name": str(recipe.get("name", run_name))}
        elif isinstance(recipe, str):
            run_name = run.get("name", Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe)
        else:
            raise ValueError(f"{where}.recipe must be a recipe name, a YAML file or a mapping, got {show(recipe)}")
        runs.append(RunSpec(check_name(run_name, f"{where}.name"), recipe, rollout, overrides))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"{source}: run names must be unique; {show(twice)} names two runs")
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or len(seeds) > MAX_SEEDS
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds)
    ):
        raise ValueError(f"{source}: seeds must be a non-empty list of at most {MAX_SEEDS} integers in [0, 2^63), "
                         f"got {show(seeds)}")
    if len(set(seeds)) != len(seeds):
        twice = next(x for i, x in enumerate(seeds) if x in seeds[:i])
        raise ValueError(f"{source}: seeds must be distinct (each seed is a run folder); {twice} is given twice")
    for key in ("baseline", "oracle"):
        if key in data:
            check_name(data[key], f"{source}: {key}")
    stability = dict(_mapping(data.get("stability") or {}, f"{source}: stability"))
    _check_keys(stability, ("lr_scale", "runs"), f"{source}: stability")
    scale = stability.get("lr_scale")
    if scale is not None and not _finite_positive(scale):
        raise ValueError(f"{source}: stability.lr_scale must be a finite number > 0, got {show(scale)}")
    stable_runs = None
    if "runs" in stability:
        if not isinstance(stability["runs"], list) or not all(isinstance(r, str) for r in stability["runs"]):
            raise ValueError(f"{source}: stability.runs must be a list of run names, got {show(stability['runs'])}")
        stable_runs = list(stability["runs"])
        if set(stable_runs) - set(names):
            unknown = sorted(set(stable_runs) - set(names))
            raise ValueError(f"{source}: stability.runs names unknown runs [{', '.join(show(r) for r in unknown[:5])}]")
    exp = Experiment(name, train_config, runs, list(seeds), str(data.get("baseline", "grpo")),
                     str(data.get("oracle", "oracle")), float(scale) if scale is not None else None, stable_runs)
    for i, run in enumerate(runs):
        where = f"{source}: runs[{i}] ({run.name})"
        try:
            config = run_config(exp, run, seeds[0])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        config.check(where)
        if exp.stability_lr_scale and (stable_runs is None or run.name in stable_runs):
            scaled = f"{where} at stability.lr_scale {exp.stability_lr_scale:g}"
            try:
                run_config(exp, run, seeds[0], exp.stability_lr_scale).check(scaled)
            except ValueError as exc:
                raise ValueError(str(exc) if str(exc).startswith(scaled) else f"{scaled}: {exc}") from None
    return exp


# What the warm start depends on: runs that agree on these share one warm start per seed.
WARM_FIELDS = ("env", "depth", "distractors", "noise", "max_steps", "env_options", "model", "hidden_size", "num_layers",
               "device", "sft_demos", "sft_error_rate", "sft_epochs", "sft_batch", "sft_lr", "sft_feedback",
               "max_grad_norm", "seed")


def warm_key(config: TrainConfig) -> str:
    """The warm-start setting of a run (``skills`` on puts the bank's skills in the demonstrations)."""
    fields = {name: getattr(config, name) for name in WARM_FIELDS}
    fields["skills"] = dataclasses.asdict(config.skills) if config.skills is not None else None
    return json.dumps(fields, sort_keys=True, default=repr)


def run_config(exp: Experiment, run: RunSpec, seed: int, lr_scale: float = 1.0) -> TrainConfig:
    config = dataclasses.replace(exp.train, recipe=run.recipe, rollout=run.rollout, seed=seed, **run.overrides)
    return dataclasses.replace(config, lr=config.lr * lr_scale) if lr_scale != 1.0 else config


# ----------------------------------------------------------------------------------- running
def _run_plan(exp: Experiment) -> list[tuple[int, RunSpec, str, float]]:
    """Every (seed, run, folder name, lr scale) the experiment trains, in order."""
    scales = [("", 1.0)] + ([(f"@{exp.stability_lr_scale:g}xlr", exp.stability_lr_scale)]
                            if exp.stability_lr_scale else [])
    plan = []
    for seed in exp.seeds:
        for suffix, scale in scales:
            for run in exp.runs:
                if suffix and exp.stability_runs is not None and run.name not in exp.stability_runs:
                    continue
                plan.append((seed, run, run.name + suffix, scale))
    return plan


def experiment_folder(exp: Experiment, out_root: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """``out_root/<name>``, after checking every run folder in it (``train.checkpoints.resume_point``) and
    that nothing lands outside ``out_root``; writes nothing."""
    root = Path(out_root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: --out is a file; expected a folder")
    out = root / check_name(exp.name, "experiment name")
    if root.resolve() not in out.resolve().parents:
        raise ValueError(f"{out}: resolves outside {root}; choose another name or --out")
    for seed, run, name, scale in _run_plan(exp):
        run_dir = out / f"{name}-seed{seed}"
        if out.resolve() not in run_dir.resolve().parents:
            raise ValueError(f"{run_dir}: resolves outside {out}")
        resume_point(run_config(exp, run, seed, scale), run_dir, resume=resume, overwrite=overwrite)
    return out


def run_experiment(
    exp: Experiment, out_root: str | Path = "runs", *, progress: bool = True, log: Callable[[str], None] = print,
    resume: bool = False, overwrite: bool = False,
) -> dict[str, Any]:
    """Run every run × seed (and the stability runs), then write curves, audit, summary and report.

    Every file lies under ``out_root/<name>/``. Before anything is trained or written, every run folder
    is checked: a fresh experiment needs them empty (``overwrite`` clears what earlier runs wrote);
    ``resume``: runs already there continue from their newest intact checkpoint (``train(resume=True)``),
    so a finished run is read back, not retrained, and no warm start is paid for it. A run that
    diverges (``DivergenceError``) is logged, marked in the summary, and the others go on."""
    from stepcredit.io import write_parquet

    out = experiment_folder(exp, out_root, resume=resume, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(_to_dict(exp), indent=1))
    started = time.perf_counter()
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    timings: dict[str, float] = {}
    warm_states: dict[tuple[int, str], dict[str, Any]] = {}

    def warm_for(config: TrainConfig) -> Any:
        """One warm start per seed and per warm-start setting (runs differing only in RL share it)."""
        key = (config.seed, warm_key(config))
        if key not in warm_states:
            t0 = time.perf_counter()
            policy = build_policy(config.check())
            warm_start(policy, config, log)
            warm_states[key] = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
            count = sum(k[0] == config.seed for k in warm_states)
            label = f"warm start seed {config.seed}" + (f" ({count})" if count > 1 else "")
            timings[label] = time.perf_counter() - t0
        return warm_states[key]

    for seed, run, name, scale in _run_plan(exp):
        if warm_states and all(k[0] != seed for k in warm_states):
            warm_states.clear()  # the previous seed's weights are no longer needed
        t1 = time.perf_counter()
        last: dict[str, Any] = {}

        def keep_last(row: dict[str, Any], batch: Any, last: dict[str, Any] = last) -> None:
            last["batch"] = batch

        run_dir = out / f"{name}-seed{seed}"
        config = run_config(exp, run, seed, scale)
        point = resume_point(config, run_dir, resume=resume, overwrite=overwrite)
        continued = point.state is not None  # train() continues it: no warm start
        try:
            history = train(config, run_dir, init_state=None if continued else warm_for(config), progress=progress,
                            on_step=keep_last, resume=resume, overwrite=overwrite, start_point=point)
        except DivergenceError as exc:
            if not any("eval_success" in row for row in exc.history):
                raise  # the warm start itself diverged: every run of the seed starts from it
            history = exc.history
            log(f"{name} seed {seed}: {exc}")
        if "batch" in last:
            write_parquet(last["batch"].rollouts, run_dir / "last_rollouts.parquet")
        histories.setdefault(name, []).append(history)
        timings[f"{name} seed {seed}"] = time.perf_counter() - t1
        evals = [h["eval_success"] for h in history if "eval_success" in h]
        if evals:
            log(f"{name} seed {seed}: held-out success {100 * evals[0]:.0f}% → {100 * evals[-1]:.0f}% "
                f"({timings[f'{name} seed {seed}']:.0f} s)")
    summary = summarize_runs(exp, histories)
    summary["seconds"] = time.perf_counter() - started
    summary["timings"] = timings
    audit_result = _audit_last(exp, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    (out / "summary.md").write_text(summary_markdown(summary))
    curves = plot_curves(exp, histories, out / "curves.png")
    _write_report(exp, summary, audit_result, curves, out / "report.html")
    log(f"wrote {out / 'report.html'} ({summary['seconds']:.0f} s)")
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)


def _to_dict(exp: Experiment) -> dict[str, Any]:
    return {"name": exp.name, "seeds": exp.seeds, "train": dataclasses.asdict(exp.train),
            "runs": [dataclasses.asdict(r) for r in exp.runs], "baseline": exp.baseline, "oracle": exp.oracle,
            "stability_lr_scale": exp.stability_lr_scale, "stability_runs": exp.stability_runs}


# ----------------------------------------------------------------------------------- summary
def _evals(history: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [h for h in history if "eval_success" in h]
    return (np.array([h["rollouts"] for h in rows]), np.array([h["tokens"] for h in rows]),
            np.array([h["eval_success"] for h in rows]))


def rollouts_to_reach(history: list[dict[str, Any]], target: float) -> float:
    """Rollouts generated before the first evaluation at or above ``target`` (inf if never)."""
    rollouts, _, success = _evals(history)
    hit = np.nonzero(success >= target - 1e-9)[0]
    return float(rollouts[hit[0]]) if hit.size else math.inf


def _diverged(history: list[dict[str, Any]]) -> bool:
    return bool(history) and "diverged" in history[-1]


def _final(history: list[dict[str, Any]]) -> float:
    """Final success: the mean of the last two evaluations (one evaluation is noisy); 0 for a run that
    diverged (its last weights are not finite: it ends with no policy)."""
    if _diverged(history):
        return 0.0
    _, _, success = _evals(history)
    return float(success[-2:].mean())


def _stat(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):  # a seed that never reached: the mean is infinite too
        return {"mean": math.inf, "min": min(values), "max": max(values), "reached": len(finite)}
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "reached": len(finite)}


def summarize_runs(exp: Experiment, histories: dict[str, list[list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per run (``histories[name][k]`` is the run of seed ``exp.seeds[k]``): final success; rollouts to
    reach the baseline's final success *of the same seed* (each seed has its own warm start) and a
    mid-level target half-way from that seed's warm start to it; the share of the baseline → oracle gap
    closed in rollouts to the baseline's final success, ``(R_base − R_run) / (R_base − R_oracle)`` on
    the means over seeds; collapsed seeds (the final success below the warm start's); diverged seeds
    (``DivergenceError``: their final success counts as 0, and a diverged baseline seed sets no target,
    so no run reaches it)."""
    base_runs = histories.get(exp.baseline) or []
    starts = [float(_evals(h)[2][0]) for h in base_runs] or [
        float(np.mean([_evals(h)[2][0] for hs in histories.values() for h in hs]))
    ]
    finals = [math.nan if _diverged(h) else _final(h) for h in base_runs]  # a diverged baseline sets no target
    mids = [s0 + 0.5 * (f - s0) for s0, f in zip(starts, finals, strict=False)]
    runs: dict[str, Any] = {}
    for name, hs in histories.items():
        def reach(targets: list[float], hs: list[list[dict[str, Any]]] = hs) -> dict[str, float]:
            if not targets:
                return {"mean": math.nan, "min": math.nan, "max": math.nan, "reached": 0}
            return _stat([rollouts_to_reach(h, t) for h, t in zip(hs, targets, strict=False)])

        steps = [[r for r in h if "time_generate" in r] for h in hs]
        runs[name] = {
            "seeds": len(hs),
            "final_success": _stat([_final(h) for h in hs]),
            "rollouts_to_final": reach(finals),
            "rollouts_to_mid": reach(mids),
            "collapsed": sum(_final(h) < _evals(h)[2][0] - 1e-9 for h in hs) / len(hs),
            "diverged": [f"step {h[-1]['step']}: {h[-1]['diverged']}" if h and "diverged" in h[-1] else None
                         for h in hs],
            "seconds_per_step": float(np.mean([np.mean([r["time_generate"] + r["time_credit"] + r["time_update"]
                                                        for r in st]) for st in steps if st] or [math.nan])),
            "credit_share": float(np.mean([sum(r["time_credit"] for r in st)
                                           / max(sum(r["time_generate"] + r["time_credit"] + r["time_update"]
                                                     for r in st), 1e-9) for st in steps if st] or [math.nan])),
        }
    base = runs.get(exp.baseline, {}).get("rollouts_to_final", {}).get("mean", math.nan)
    oracle = runs.get(exp.oracle, {}).get("rollouts_to_final", {}).get("mean", math.nan)
    for rec in runs.values():
        mine = rec["rollouts_to_final"]["mean"]
        gap = base - oracle
        rec["gap_closed"] = (base - mine) / gap if math.isfinite(gap) and gap > 0 and math.isfinite(mine) else None
        rec["rollouts_vs_baseline"] = mine / base if math.isfinite(base) and base > 0 and math.isfinite(mine) else None
    return {"name": exp.name, "warm_start_success": float(np.mean(starts)),
            "target_final": float(np.nanmean(finals)) if any(map(math.isfinite, finals)) else math.nan,
            "target_mid": float(np.nanmean(mids)) if any(map(math.isfinite, mids)) else math.nan,
            "baseline": exp.baseline, "oracle": exp.oracle, "runs": runs}


def _fmt_stat(s: dict[str, float], pct: bool = False, digits: int = 0) -> str:
    if not math.isfinite(s["mean"]):
        return f"not reached ({s['reached']:.0f} seed(s) did)" if s.get("reached", 0) else "not reached"
    scale = 100 if pct else 1
    text = f"{scale * s['mean']:.{digits}f}" + ("%" if pct else "")
    if s["max"] > s["min"]:
        text += f" [{scale * s['min']:.{digits}f}, {scale * s['max']:.{digits}f}]"
    return text


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (mean [min, max] over seeds)."""
    lines = [
        f"warm start: {100 * summary['warm_start_success']:.0f}% held-out success (mean over seeds); targets, "
        f"per seed: {summary['baseline']}'s final success (mean {100 * summary['target_final']:.0f}%) and half-way "
        f"to it (mean {100 * summary['target_mid']:.0f}%)",
        "",
        "| run | final success | rollouts to mid | rollouts to GRPO's final | vs GRPO | gap closed | collapsed |"
        " diverged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rec in summary["runs"].items():
        ratio = "–" if rec["rollouts_vs_baseline"] is None else f"{rec['rollouts_vs_baseline']:.2f}×"
        gap = "–" if rec["gap_closed"] is None else f"{100 * rec['gap_closed']:.0f}%"
        lines.append(
            f"| {name} | {_fmt_stat(rec['final_success'], pct=True)} | {_fmt_stat(rec['rollouts_to_mid'])} | "
            f"{_fmt_stat(rec['rollouts_to_final'])} | {ratio} | {gap} | {100 * rec['collapsed']:.0f}% | "
            f"{'; '.join(d for d in rec.get('diverged', []) if d) or '–'} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- outputs
def plot_curves(exp: Experiment, histories: dict[str, list[list[dict[str, Any]]]], path: Path) -> bytes:
    """Held-out success vs rollouts and vs generated tokens; mean over seeds, min–max band. PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name, hs in histories.items():
        for ax, col in zip(axes, (0, 1), strict=True):
            xs = [_evals(h)[col] for h in hs]
            ys = [_evals(h)[2] for h in hs]
            n = min(len(y) for y in ys)
            x = np.mean([v[:n] for v in xs], axis=0)
            y = np.array([v[:n] for v in ys])
            style = "--" if name == exp.oracle else "-"
            (line,) = ax.plot(x, y.mean(axis=0), style, label=name, lw=2 if name in (exp.baseline, exp.oracle) else 1.4)
            if len(hs) > 1:
                ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("rollouts (trajectories generated)")
    axes[1].set_xlabel("generated tokens")
    for ax in axes:
        ax.set_ylabel("held-out success (greedy)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{exp.name}: {exp.train.env}, seeds {exp.seeds}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _audit_last(exp: Experiment, out: Path) -> Any:
    """The audit of the baseline run's last rollouts (first seed; the first run's when there is no
    baseline run) with every recipe of the experiment."""
    from stepcredit.auditing import audit
    from stepcredit.io import load
    from stepcredit.recipe import Recipe

    names = [r.name for r in exp.runs]
    audited = exp.baseline if exp.baseline in names else names[0]
    first = out / f"{audited}-seed{exp.seeds[0]}" / "last_rollouts.parquet"
    if not first.exists():
        return None
    rollouts = load(first)
    recipes = {json.dumps(r.recipe, sort_keys=True): Recipe.load(r.recipe) for r in exp.runs}  # each once
    result = audit(rollouts, list(recipes.values()), bootstrap=200)
    (out / "audit.json").write_text(json.dumps(result.to_dict(), indent=1, default=_json_default))
    return result


def _write_report(exp: Experiment, summary: dict[str, Any], audit_result: Any, png: bytes, path: Path) -> None:
    from stepcredit.auditing.report import METRIC_NAMES, metric_cells

    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    md = summary_markdown(summary).splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md[4:] if line.startswith("|")]
    header = [c.strip() for c in md[2].strip("|").split("|")]
    parts = [
        f"<h1>{html.escape(exp.name)}</h1>",
        f"<p>{html.escape(md[0])}. Total {summary['seconds']:.0f} s.</p>",
        table(header, rows),
        f'<img alt="learning curves" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
    ]
    if audit_result is not None:
        audited = exp.baseline if exp.baseline in [r.name for r in exp.runs] else exp.runs[0].name
        parts.append(f"<h2>Credit audit of the last rollouts of {html.escape(audited)}</h2>")
        cells = [[n, *c] for n, c in metric_cells(audit_result)]
        parts.append(table(["recipe", *METRIC_NAMES.values()], cells))
    timing_rows = [[k, f"{v:.1f} s"] for k, v in summary["timings"].items()]
    parts += ["<h2>Time</h2>", table(["part", "wall time"], timing_rows)]
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(_to_dict(exp), indent=1))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(exp.name)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")
