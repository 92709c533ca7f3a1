"""``stepcredit experiment``: recipes × seeds on one environment family, compared end to end.

For every seed the policy is warm-started once (SFT on noisy-oracle demonstrations) and every run of
that seed starts from the same weights, so runs differ only by their credit (and rollout shape) — except
runs whose warm start itself differs (``WARM_FIELDS``, or ``skills``, whose demonstrations carry the
skill bank): each such setting is warm-started once per seed. Each
run is a ``train`` call; the experiment writes ``<out>/<name>/``:

* ``<run>-seed<k>/``: the run's ``config.json``, ``metrics.jsonl``, checkpoints, ``last_rollouts.parquet``;
* ``curves.png``: held-out success vs rollouts and vs generated tokens (mean over seeds, min–max band);
* ``audit.json``: the credit audit of the last rollouts of the baseline run (labels from the env);
* ``summary.json`` / ``summary.md``: per run, final success, rollouts to reach outcome-GRPO's final
  success and a mid-level target, the share of the GRPO → oracle gap closed, collapses;
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stepcredit.train.config import TrainConfig
from stepcredit.train.loop import build_policy, train
from stepcredit.train.warmstart import warm_start

__all__ = ["DEFAULT_EXPERIMENT", "Experiment", "RunSpec", "load_experiment", "run_experiment", "summarize_runs"]


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
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def load_experiment(spec: str | Path | Mapping[str, Any] | None = None) -> Experiment:
    """An experiment from a YAML file, a dict, or the built-in default (``None``)."""
    from stepcredit.recipe import read_yaml

    if spec is None:
        data: Any = DEFAULT_EXPERIMENT
        source = "the default experiment"
    elif isinstance(spec, Mapping):
        data, source = spec, "experiment"
    else:
        path = Path(spec)
        data, source = read_yaml(path.read_text(encoding="utf-8"), str(path)), str(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping with name, train, runs")
    _check_keys(data, ("name", "seeds", "train", "runs", "baseline", "oracle", "stability"), source)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = dict(data.get("train") or {})
    _check_keys(base, sorted(train_fields), f"{source}: train")
    if "tree" in base:
        base["tree"] = tuple(base["tree"])
    runs = []
    for i, run in enumerate(data.get("runs") or []):
        if not isinstance(run, Mapping) or "recipe" not in run:
            raise ValueError(f"{source}: runs[{i}] must be a mapping with at least a recipe")
        _check_keys(run, ("name", "recipe", "rollout", *sorted(train_fields)), f"{source}: runs[{i}]")
        overrides = {k: v for k, v in run.items() if k not in ("name", "recipe", "rollout")}
        rollout = run.get("rollout", "chains")
        if rollout not in ("chains", "trees"):
            raise ValueError(f"{source}: runs[{i}].rollout must be 'chains' or 'trees', got {rollout!r}")
        recipe = run["recipe"]
        if isinstance(recipe, Mapping):  # inline: the run's name names the recipe too
            name = run.get("name", recipe.get("name"))
            if name is None:
                raise ValueError(f"{source}: runs[{i}] with an inline recipe needs a name")
            recipe = {**recipe, "name": str(recipe.get("name", name))}
        else:
            name, recipe = run.get("name", recipe), str(recipe)
        runs.append(RunSpec(str(name), recipe, rollout, overrides))
    if not runs:
        raise ValueError(f"{source}: no runs")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: run names must be unique, got {names}")
    seeds = [int(s) for s in data.get("seeds", [0])]
    stability = data.get("stability") or {}
    _check_keys(stability, ("lr_scale", "runs"), f"{source}: stability")
    stable_runs = [str(r) for r in stability["runs"]] if "runs" in stability else None
    if stable_runs is not None and set(stable_runs) - set(names):
        raise ValueError(f"{source}: stability.runs names unknown runs {sorted(set(stable_runs) - set(names))}")
    exp = Experiment(str(data.get("name", "experiment")), TrainConfig(**base), runs, seeds,
                     str(data.get("baseline", "grpo")), str(data.get("oracle", "oracle")),
                     float(stability["lr_scale"]) if "lr_scale" in stability else None, stable_runs)
    for run in runs:
        run_config(exp, run, seeds[0]).check()
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
def run_experiment(
    exp: Experiment, out_root: str | Path = "runs", *, progress: bool = True, log: Callable[[str], None] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Run every run × seed (and the stability runs), then write curves, audit, summary and report.

    ``resume``: runs already in ``out_root`` continue from their last checkpoint (``train(resume=True)``),
    so a finished run is read back, not retrained, and no warm start is paid for it."""
    from stepcredit.io import write_parquet

    out = Path(out_root) / exp.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(_to_dict(exp), indent=1))
    started = time.perf_counter()
    histories: dict[str, list[list[dict[str, Any]]]] = {}
    timings: dict[str, float] = {}
    scales = [("", 1.0)] + ([(f"@{exp.stability_lr_scale:g}xlr", exp.stability_lr_scale)]
                            if exp.stability_lr_scale else [])
    for seed in exp.seeds:
        warm_states: dict[str, dict[str, Any]] = {}

        def warm_for(config: TrainConfig, seed: int = seed, cache: dict[str, dict[str, Any]] = warm_states) -> Any:
            """One warm start per seed and per warm-start setting (runs differing only in RL share it)."""
            key = warm_key(config)
            if key not in cache:
                t0 = time.perf_counter()
                policy = build_policy(config.check())
                warm_start(policy, config, log)
                cache[key] = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
                label = f"warm start seed {seed}" + (f" ({len(cache)})" if len(cache) > 1 else "")
                timings[label] = time.perf_counter() - t0
            return cache[key]

        for suffix, scale in scales:
            for run in exp.runs:
                if suffix and exp.stability_runs is not None and run.name not in exp.stability_runs:
                    continue
                name = run.name + suffix
                t1 = time.perf_counter()
                last: dict[str, Any] = {}

                def keep_last(row: dict[str, Any], batch: Any, last: dict[str, Any] = last) -> None:
                    last["batch"] = batch

                run_dir = out / f"{name}-seed{seed}"
                config = run_config(exp, run, seed, scale)
                continued = resume and any(run_dir.glob("checkpoint-*.pt"))  # train() continues it: no warm start
                history = train(config, run_dir, init_state=None if continued else warm_for(config), progress=progress,
                                on_step=keep_last, resume=resume)
                if "batch" in last:
                    write_parquet(last["batch"].rollouts, run_dir / "last_rollouts.parquet")
                histories.setdefault(name, []).append(history)
                timings[f"{name} seed {seed}"] = time.perf_counter() - t1
                evals = [h["eval_success"] for h in history if "eval_success" in h]
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


def _final(history: list[dict[str, Any]]) -> float:
    """Final success: the mean of the last two evaluations (one evaluation is noisy)."""
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
    the means over seeds; collapsed seeds (the final success below the warm start's)."""
    base_runs = histories.get(exp.baseline) or []
    starts = [float(_evals(h)[2][0]) for h in base_runs] or [
        float(np.mean([_evals(h)[2][0] for hs in histories.values() for h in hs]))
    ]
    finals = [_final(h) for h in base_runs]
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
            "target_final": float(np.mean(finals)) if finals else math.nan,
            "target_mid": float(np.mean(mids)) if mids else math.nan,
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
        "| run | final success | rollouts to mid | rollouts to GRPO's final | vs GRPO | gap closed | collapsed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rec in summary["runs"].items():
        ratio = "–" if rec["rollouts_vs_baseline"] is None else f"{rec['rollouts_vs_baseline']:.2f}×"
        gap = "–" if rec["gap_closed"] is None else f"{100 * rec['gap_closed']:.0f}%"
        lines.append(
            f"| {name} | {_fmt_stat(rec['final_success'], pct=True)} | {_fmt_stat(rec['rollouts_to_mid'])} | "
            f"{_fmt_stat(rec['rollouts_to_final'])} | {ratio} | {gap} | {100 * rec['collapsed']:.0f}% |"
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
