"""The audit as a self-contained HTML file: inline CSS, plots as embedded PNG, no network."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stepcredit.auditing.run import Audit
from stepcredit.core import StepKind, segments

METRIC_NAMES = {
    "blame": "blame ↓",
    "false_praise": "false praise ↓",
    "bsa_failed": "BSA (failed) ↑",
    "bsa_all": "BSA (all) ↑",
    "auroc_failed": "AUROC +1 vs −1 (failed) ↑",
    "auroc_all": "AUROC +1 vs −1 (all) ↑",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#1d2230}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d7dae3;padding:3px 7px;vertical-align:top}
th{background:#f1f3f8;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#667;font-size:12px}.muted{color:#667}.fail{color:#b42318}.ok{color:#067647}
.lab1{background:#d1fadf}.lab-1{background:#fee4e2}.steps td.text{max-width:420px;white-space:pre-wrap;
word-break:break-word;font-size:12.5px}.steps td.call{font-family:ui-monospace,monospace;font-size:12px;
max-width:360px;white-space:pre-wrap;word-break:break-all}section.traj{border-top:2px solid #e3e6ee;margin-top:18px}
nav a{margin-right:8px}img{max-width:100%}
"""


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def _colour(value: float, scale: float) -> str:
    """Diverging red (negative) – white – green (positive) background for ``value / scale``."""
    if math.isnan(value):
        return "background:#f4f4f6;color:#99a"
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if t >= 0:
        r, g, b = 255 - int(150 * t), 255 - int(40 * t), 255 - int(150 * t)
    else:
        r, g, b = 255 + int(15 * t), 255 + int(170 * t), 255 + int(170 * t)
    return f"background:rgb({r},{g},{b})"


def _plot(audit: Audit) -> str:
    """Credit of labelled units by label × outcome, one panel per recipe, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = audit.rollouts
    n = len(audit.recipes)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    if audit.unit == "call":
        label, traj = r.call_label, r.call_traj
    else:
        label, traj = r.label, r.step_traj
    assert label is not None
    failed = (r.outcome < audit.success_threshold)[traj]
    cases = [("+1", 1, True), ("0", 0, True), ("−1", -1, True), ("+1", 1, False), ("0", 0, False), ("−1", -1, False)]
    for k, a in enumerate(audit.recipes):
        ax = axes[k // cols][k % cols]
        values = a.call_credit if audit.unit == "call" else a.step_credit
        data, names = [], []
        for name, v, f in cases:
            pick = (label == v) & (failed == f) & ~torch.isnan(values)
            data.append(values[pick].double().numpy())
            names.append(f"{name}\n{'fail' if f else 'succ'}")
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(a.name, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"credit of labelled {audit.unit}s by label × outcome", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _metric_table(audit: Audit) -> str:
    head = "".join(f"<th>{html.escape(v)}</th>" for v in METRIC_NAMES.values())
    rows = []
    for a in audit.recipes:
        cells = []
        for key in METRIC_NAMES:
            lo, hi = a.intervals.get(key, (math.nan, math.nan))
            value = _pct(a.metrics[key]) if not key.startswith("auroc") else _fmt(a.metrics[key])
            ci = f"{_pct(lo)}–{_pct(hi)}" if not key.startswith("auroc") else f"{_fmt(lo)}–{_fmt(hi)}"
            cells.append(f"<td class='num'>{value}<br><span class='ci'>{ci}</span></td>")
        dens = a.density
        cells.append(f"<td class='num'>{_pct(dens['steps_nonzero'])}</td>")
        cells.append(f"<td class='num'>{_pct(dens['tokens_nonzero'])}</td>")
        cells.append(f"<td class='num'>{a.num_kept}</td>")
        rows.append(f"<tr><th title='{html.escape(a.description)}'>{html.escape(a.name)}</th>{''.join(cells)}</tr>")
    return (
        "<table class='metrics'><tr><th>recipe</th>"
        + head
        + "<th>steps ≠ 0</th><th>tokens ≠ 0</th><th>trajectories</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _calibration(audit: Audit) -> str:
    c = audit.calibration
    if c is None:
        return ""
    return (
        "<h2>Calibration of stated confidence</h2><table><tr><th>trajectories stating one</th>"
        "<th>Brier score ↓</th><th>ECE ↓</th><th>AUROC ↑</th></tr>"
        f"<tr><td class='num'>{c['stated']}</td><td class='num'>{_fmt(c['brier_score'], 3)}</td>"
        f"<td class='num'>{_fmt(c['ece'], 3)}</td><td class='num'>{_fmt(c['auroc'])}</td></tr></table>"
    )


def _mean_table(audit: Audit) -> str:
    head = "".join(f"<th>{lab} · {out}</th>" for lab in ("+1", "0", "−1") for out in ("failure", "success"))
    rows = []
    for a in audit.recipes:
        cells = []
        for lab in ("+1", "0", "-1"):
            for out in ("failure", "success"):
                c = a.mean_credit[lab][out]
                cells.append(f"<td class='num'>{_fmt(c['mean'], 3)}<br><span class='ci'>n={c['n']}</span></td>")
        rows.append(f"<tr><th>{html.escape(a.name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>recipe</th>{head}</tr>{''.join(rows)}</table>"


def _skew_table(audit: Audit) -> str:
    if not audit.recipes:
        return ""
    buckets = [row["steps"] for row in audit.recipes[0].length_skew]
    head = "".join(f"<th>{b} steps</th>" for b in buckets)
    share = "".join(f"<td class='num'>{_pct(row['trajectory_share'])}</td>" for row in audit.recipes[0].length_skew)
    rows = [f"<tr><th class='muted'>share of trajectories</th>{share}</tr>"]
    for a in audit.recipes:
        cells = "".join(f"<td class='num'>{_pct(row['credit_share'])}</td>" for row in a.length_skew)
        rows.append(f"<tr><th>{html.escape(a.name)}</th>{cells}</tr>")
    return f"<table><tr><th>share of total |credit|</th>{head}</tr>{''.join(rows)}</table>"


def _label_text(label: int) -> str:
    return {1: "+1", 0: "0", -1: "−1"}[label]


def _clip(text: str, limit: int = 600) -> str:
    return html.escape(text if len(text) <= limit else text[:limit] + " …")


DEFAULT_MAX_TRAJECTORIES = 200


def trajectory_sample(audit: Audit, limit: int = DEFAULT_MAX_TRAJECTORIES) -> tuple[Tensor, Tensor]:
    """The trajectories the report shows, worst blamed first: ``(indices [≤ limit], blamed [T])``.

    ``blamed[i]`` counts the (recipe, correct unit) pairs of trajectory ``i`` with credit < 0, for
    failed trajectories (blame is defined on them; 0 for successes). Order: most blamed first, then
    failed trajectories with correct units, other failed ones, successes; ties by batch order."""
    if limit < 0:
        raise ValueError(f"the number of trajectories to show must be ≥ 0, got {limit}")
    r = audit.rollouts
    n = r.num_trajectories
    if audit.unit == "call":
        label, traj = r.call_label, r.call_traj
        credit = [a.call_credit for a in audit.recipes]
    else:
        label, traj = r.label, r.step_traj
        credit = [a.step_credit for a in audit.recipes]
    assert label is not None
    good = label == 1
    failed = r.outcome < audit.success_threshold
    good_units = segments.segment_sum(good.long(), traj, n)
    blamers = (torch.stack(credit) < 0).sum(0) if credit else torch.zeros_like(traj)  # NaN < 0 is False
    blamed = torch.where(failed, segments.segment_sum(torch.where(good, blamers, 0), traj, n), 0)
    category = torch.where(failed & (good_units > 0), 0, torch.where(failed, 1, 2))
    order = torch.argsort(category, stable=True)
    order = order[torch.argsort(-blamed[order], stable=True)]
    return order[:limit], blamed


def _trajectories(audit: Audit, sample: Tensor, blamed: Tensor) -> tuple[str, str]:
    """(index, pages): one section per trajectory of ``sample``, in its order."""
    full = audit.rollouts
    if sample.numel() == 0:
        return "", ""
    steps_of, calls_of = full.expand(sample)
    r = full.select(sample)  # only the shown trajectories' texts are read
    assert r.texts is not None
    t = {
        k: getattr(r.texts, k).to_pylist()
        for k in ("ids", "group_names", "action", "observation", "call_name", "call_arguments", "call_result")
    }
    off, coff = r.step_offsets.tolist(), r.call_offsets.tolist()
    kind, call_ok = r.kind.tolist(), r.call_ok.tolist()
    group, outcome = r.group.tolist(), r.outcome.tolist()
    failed = [x < audit.success_threshold for x in outcome]
    call_label = r.call_label.tolist() if r.call_label is not None else None
    step_label = r.label.tolist() if r.label is not None else None
    label, traj = (r.call_label, r.call_traj) if call_label is not None else (r.label, r.step_traj)
    good_calls = (
        segments.segment_sum((label == 1).long(), traj, r.num_trajectories).tolist() if label is not None else []
    )
    scales = []
    for a in audit.recipes:
        v = a.step_credit[~torch.isnan(a.step_credit)].abs().double().cpu().numpy()
        scales.append(float(np.quantile(v, 0.95)) if v.size else 1.0)
    steps_credit = [a.step_credit[steps_of].tolist() for a in audit.recipes]
    calls_credit = [a.call_credit[calls_of].tolist() for a in audit.recipes]
    where, blame = sample.tolist(), blamed[sample].tolist()
    index, pages = [], []
    recipe_head = "".join(f"<th>{html.escape(a.name)}</th>" for a in audit.recipes)
    for i in range(r.num_trajectories):  # the bounded sample only
        anchor = f"t{where[i]}"
        status = "<span class='fail'>failed</span>" if failed[i] else "<span class='ok'>succeeded</span>"
        index.append(
            f"<li><a href='#{anchor}'>{html.escape(t['ids'][i])}</a> — task {html.escape(t['group_names'][group[i]])},"
            f" {status}, {good_calls[i]} correct, blamed {blame[i]}×</li>"
        )
        rows = []
        for s in range(off[i], off[i + 1]):
            calls = range(coff[s], coff[s + 1])
            lab = None
            if call_label is not None and calls:
                labs = [call_label[c] for c in calls]
                lab = -1 if -1 in labs else (1 if 1 in labs else 0)
            elif step_label is not None:
                lab = step_label[s]
            call_text = "\n".join(
                f"{t['call_name'][c]}({t['call_arguments'][c]})"
                f"{'' if call_label is None else '  [' + _label_text(call_label[c]) + ']'}"
                for c in calls
            )
            result_text = "\n".join(("ERROR " if call_ok[c] == 0 else "") + t["call_result"][c] for c in calls)
            seen = result_text + ("\n" if result_text else "") + t["observation"][s]
            cells = []
            for k in range(len(audit.recipes)):
                values = [calls_credit[k][c] for c in calls] if calls else [steps_credit[k][s]]
                value = sum(values) / len(values)
                cells.append(f"<td class='num' style='{_colour(value, scales[k])}'>{_fmt(value, 3)}</td>")
            lab_cls = f" class='lab{lab}'" if lab in (1, -1) else ""
            lab_txt = "" if lab is None else _label_text(lab)
            rows.append(
                f"<tr><td class='num'>{s - off[i]}</td><td>{StepKind(kind[s]).name.lower()}</td>"
                f"<td class='text'>{_clip(t['action'][s])}</td><td class='call'>{_clip(call_text)}</td>"
                f"<td class='text'>{_clip(seen, 400)}</td>"
                f"<td{lab_cls}>{lab_txt}</td>{''.join(cells)}</tr>"
            )
        pages.append(
            f"<section class='traj' id='{anchor}'><h3>{html.escape(t['ids'][i])} — task "
            f"{html.escape(t['group_names'][group[i]])}, outcome {outcome[i]:g} ({status})</h3>"
            f"<table class='steps'><tr><th>#</th><th>kind</th><th>text</th><th>tool calls</th>"
            f"<th>result / observation</th><th>label</th>{recipe_head}</tr>{''.join(rows)}</table>"
            f"<a href='#top'>back to top</a></section>"
        )
    return "<ol>" + "".join(index) + "</ol>", "".join(pages)


def _sample_note(audit: Audit, shown: int) -> str:
    total = audit.rollouts.num_trajectories
    left = total - shown
    unit = audit.unit
    what = (
        f"Order: the most blamed first (blamed k×: k pairs of a recipe and a correct {unit} of the failed "
        f"trajectory with credit &lt; 0), then the other failed trajectories with correct {unit}s, the other "
        "failed ones, successes."
    )
    if audit.chunks > 1:
        what += (
            f" The log was audited in {audit.chunks} chunks: these sections and the credit plot show its first "
            f"chunk ({total} of {audit.trajectories} trajectories); every table covers all of them."
        )
    if left == 0:
        return f"All {total} trajectories shown. {what}"
    return (
        f"Showing {shown} of {total} trajectories; <b>{left} trajectories left out</b> (the summary above "
        f"covers all of them). {what}"
    )


def render_html(
    audit: Audit,
    *,
    title: str = "stepcredit audit",
    source: str = "",
    max_trajectories: int = DEFAULT_MAX_TRAJECTORIES,
) -> str:
    """The report page: summary tables and plots over every unit; step-by-step sections for at most
    ``max_trajectories`` trajectories (``trajectory_sample``: worst blamed first), with the count of
    those left out."""
    sample, blamed = trajectory_sample(audit, max_trajectories)
    index, pages = _trajectories(audit, sample, blamed)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{CSS}</style></head><body id="top">
<h1>{html.escape(title)}</h1>
<p class="muted">{html.escape(source)} · {audit.trajectories} trajectories ({audit.failed} failed)
in {audit.groups} groups ·
audited unit: labelled {audit.unit}s · {len(audit.recipes)} recipes · 95% intervals from {audit.bootstrap}
bootstrap resamples of the groups · computed in {audit.seconds:.1f} s</p>
<h2>Does the credit land?</h2>
<p class="muted">blame: share of correct (+1) {audit.unit}s in failed trajectories with credit &lt; 0 ·
false praise: share of wrong (−1) {audit.unit}s in successful trajectories with credit &gt; 0 ·
BSA: balanced sign accuracy ½[P(credit&gt;0 | +1) + P(credit&lt;0 | −1)] · AUROC: credit ranks +1 above −1.</p>
{_metric_table(audit)}
{_calibration(audit)}<h2>Mean credit by label × outcome</h2>{_mean_table(audit)}
<h2>Credit distributions</h2><img alt="credit by label and outcome" src="data:image/png;base64,{_plot(audit)}">
<h2>Length skew</h2>{_skew_table(audit)}
<h2>Trajectories</h2><p class="muted">{_sample_note(audit, sample.numel())} Cells: each recipe's
credit of the step (of its calls, when it made any), coloured red (&lt; 0) to green (&gt; 0).</p>
<nav>{index}</nav>{pages}
</body></html>"""


def write_report(
    audit: Audit,
    path: str | Path,
    *,
    title: str = "stepcredit audit",
    source: str = "",
    max_trajectories: int = DEFAULT_MAX_TRAJECTORIES,
) -> Path:
    """Write ``render_html`` to ``path`` (at most ``max_trajectories`` trajectory sections), atomically."""
    from stepcredit.io import atomic_write

    p = Path(path)
    page = render_html(audit, title=title, source=source, max_trajectories=max_trajectories)
    with atomic_write(p) as f:
        f.write(page)
    return p


def metric_cells(audit: Audit) -> list[tuple[str, list[str]]]:
    """Per recipe, its headline metrics as text with 95% intervals: ``97% [88%, 100%]``, ``0.74 [0.41, 0.89]``."""
    rows = []
    for a in audit.recipes:
        cells = []
        for key in METRIC_NAMES:
            v, (lo, hi) = a.metrics[key], a.intervals[key]
            show = _fmt if key.startswith("auroc") else _pct
            cells.append(f"{show(v)} [{show(lo)}, {show(hi)}]")
        rows.append((a.name, cells))
    return rows


def markdown_table(audit: Audit) -> str:
    """The headline metrics as a Markdown table, 95% intervals in brackets."""
    head = "| recipe | " + " | ".join(METRIC_NAMES.values()) + " |"
    rule = "|---|" + "---:|" * len(METRIC_NAMES)
    return "\n".join([head, rule, *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in metric_cells(audit))])


BREAKDOWN_NAMES = {
    "all": "all units",
    "without_always_made": "without always-made",
    "mixed": "mixed groups",
    "all_fail": "all-fail groups",
    "all_success": "all-success groups",
}


def breakdown_cells(audit: Audit) -> list[tuple[str, str, list[str]]]:
    """Per recipe and unit subset (all units, then ``metrics.SUBSETS``): units, BSA and AUROC on failed
    trajectories with 95% intervals — the figures an always-made read or an easy group type cannot
    flatter."""
    rows = []
    for a in audit.recipes:
        total = sum(a.breakdown[k]["units"] for k in ("mixed", "all_fail", "all_success") if k in a.breakdown)
        parts = {"all": {"units": total or None, "metrics": a.metrics, "intervals": a.intervals}, **a.breakdown}
        for key, label in BREAKDOWN_NAMES.items():
            part = parts.get(key)
            if part is None:
                continue
            cells = ["" if part["units"] is None else str(part["units"])]
            for metric, show in (("bsa_failed", _pct), ("auroc_failed", _fmt)):
                v, (lo, hi) = part["metrics"][metric], part["intervals"][metric]
                cells.append(f"{show(v)} [{show(lo)}, {show(hi)}]")
            rows.append((a.name, label, cells))
    return rows


def breakdown_markdown(audit: Audit) -> str:
    """``breakdown_cells`` as a Markdown table."""
    head = "| recipe | units | n | BSA (failed) ↑ | AUROC +1 vs −1 (failed) ↑ |\n|---|---|---:|---:|---:|"
    return "\n".join([head, *(f"| {r} | {label} | " + " | ".join(c) + " |" for r, label, c in breakdown_cells(audit))])
