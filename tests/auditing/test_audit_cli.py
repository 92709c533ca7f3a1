"""The audit command end to end: real logs, chat logs labelled from references, the HTML report in a
real headless browser."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from stepcredit.auditing.run import audit
from stepcredit.envs.synthetic import make_rollouts
from stepcredit.io import write_chat_jsonl
from tests.support.cli import run


@pytest.mark.realdata
def test_audit_tau2_every_builtin_recipe(tau2_rollouts):
    from stepcredit.recipe import builtin_recipes

    names = sorted(set(builtin_recipes()) - {"prm_step"})  # prm_step needs PRM scores: tau2 has none
    result = audit(tau2_rollouts, names, bootstrap=200)  # (its time is measured in benchmarks/RESULTS.md)
    assert [a.name for a in result.recipes] == names and result.unit == "call"
    by = {a.name: a for a in result.recipes}
    assert by["grpo"].metrics["bsa_failed"] == pytest.approx(0.44, abs=0.01)  # outcome credit cannot rank calls
    assert by["action_anchor"].metrics["blame"] < by["grpo"].metrics["blame"]
    assert by["grpo_roc"].kept.numel() < tau2_rollouts.num_trajectories  # selection recipes audit what they keep


@pytest.mark.realdata
def test_audit_cli_json_and_report(tau2_dir, tmp_path):
    out = tmp_path / "report.html"
    res = run("audit", str(tau2_dir), "--recipes", "grpo,action_anchor", "-o", str(out), "--bootstrap", "50", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["unit"] == "call" and set(data["recipes"]) == {"grpo", "action_anchor"}
    html = out.read_text()
    assert (
        "<table class='metrics'>" in html
        and "data:image/png;base64," in html
        and "http" not in html.split("<body", 1)[1].split("<section", 1)[0]
    )


def test_audit_chat_log_with_reference_actions(tmp_path):
    r = make_rollouts(6, 4, seed=2)
    log = tmp_path / "log.jsonl"
    write_chat_jsonl(r, log)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    for rec in lines:  # strip the synthetic labels: they must come from the references
        for m in rec["messages"]:
            m.pop("label", None)
            for c in m.get("tool_calls") or []:
                c.pop("label", None)
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert run("audit", str(log), "-o", str(tmp_path / "r.html")).returncode == 2  # no labels
    refs = {}
    names, args = r.texts.call_name.to_pylist(), r.texts.call_arguments.to_pylist()
    for c in range(r.num_calls):
        if int(r.call_label[c]) == 1:
            g = r.texts.group_names[int(r.group[int(r.step_traj[int(r.call_step[c])])])].as_py()
            ref = {"name": names[c], "arguments": json.loads(args[c])}
            if ref not in refs.setdefault(g, []):
                refs[g].append(ref)
    ref_path = tmp_path / "refs.json"
    ref_path.write_text(json.dumps(refs))
    res = run(
        "audit",
        str(log),
        "--references",
        str(ref_path),
        "--recipes",
        "grpo",
        "-o",
        str(tmp_path / "r.html"),
        "--bootstrap",
        "20",
    )
    assert res.returncode == 0, res.stderr
    assert "grpo" in res.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = run("audit", str(log), "--references", str(bad))
    assert res.returncode == 2 and "expected a JSON object" in res.stderr
    # a reference file for other tasks: an error, not an audit of all "–"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"no-such-task": refs[next(iter(refs))]}))
    res = run("audit", str(log), "--references", str(other), "-o", str(tmp_path / "r.html"))
    assert res.returncode == 2 and "no reference group matches a loaded group" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    for broken, field in (
        ({"g": [{"arguments": {}}]}, "[0].name"),
        ({"g": [{"name": "f"}]}, "[0].arguments"),
        ({"g": ["book"]}, "[0]"),
        ({"g": {"name": "f"}}, None),
        ({"g": [{"name": "f", "arguments": {}, "compare_args": "id"}]}, "[0].compare_args"),
    ):
        bad.write_text(json.dumps(broken))
        res = run("audit", str(log), "--references", str(bad), "-o", str(tmp_path / "r.html"))
        assert res.returncode == 2, broken
        assert "group 'g'" in res.stderr and (field is None or f"field '{field}'" in res.stderr), res.stderr


def test_audit_help_documents_the_reference_format():
    out = run("audit", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert '"name" (string) and "arguments" (object) are required' in text and "compare_args" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    import matplotlib.image

    from stepcredit.auditing.report import write_report

    result = audit(make_rollouts(6, 4, seed=0), ["grpo", "action_anchor"], bootstrap=50)
    page = write_report(result, tmp_path / "report.html")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=False,
    )
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1100
    assert pixels[..., :3].std() > 0.05  # not a blank page
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    assert '<table class="metrics">' in dom and "action_anchor" in dom
    assert dom.count('<section class="traj"') == 24
