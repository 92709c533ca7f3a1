"""The HTML report at scale: summaries over everything, trajectory sections for a bounded sample."""

from __future__ import annotations

import re

import pytest
import torch

from stepcredit.auditing import metrics as M
from stepcredit.auditing.report import DEFAULT_MAX_TRAJECTORIES, render_html, trajectory_sample, write_report
from stepcredit.auditing.run import DEFAULT_RECIPES, audit
from stepcredit.envs.synthetic import make_rollouts

RECIPES = ["grpo", "call_consensus", "action_anchor"]


@pytest.fixture(scope="module")
def big():
    r = make_rollouts(250, 8, seed=5)  # 2,000 trajectories
    assert r.num_trajectories == 2000
    return audit(r, RECIPES, bootstrap=0)


def blame_by_loop(a) -> list[int]:
    """Per trajectory: (recipe, correct call) pairs with credit < 0, in failed trajectories."""
    r = a.rollouts
    out = [0] * r.num_trajectories
    traj, label, outcome = r.call_traj.tolist(), r.call_label.tolist(), r.outcome.tolist()
    for ra in a.recipes:
        for c, credit in enumerate(ra.call_credit.tolist()):
            if label[c] == 1 and outcome[traj[c]] < a.success_threshold and credit < 0:
                out[traj[c]] += 1
    return out


def shown_ids(page: str) -> list[str]:
    return re.findall(r"<section class='traj' id='t(\d+)'>", page)


def test_large_batch_report_is_bounded_and_shows_the_worst_blamed(big, tmp_path):
    path = write_report(big, tmp_path / "r.html")
    page = path.read_text()
    shown = [int(i) for i in shown_ids(page)]
    assert len(shown) == DEFAULT_MAX_TRAJECTORIES == 200 and len(set(shown)) == 200
    assert "Showing 200 of 2000 trajectories; <b>1800 trajectories left out</b>" in page
    assert path.stat().st_size < 2_000_000  # ~0.6 MB: 200 sections and the summaries, not 2,000 sections
    blame = blame_by_loop(big)
    hidden = set(range(2000)) - set(shown)
    assert min(blame[i] for i in shown) >= max(blame[i] for i in hidden)  # the worst blamed are shown
    assert [blame[i] for i in shown] == sorted((blame[i] for i in shown), reverse=True)  # worst first
    assert max(blame) == len(RECIPES) and blame[shown[0]] == max(blame)
    # the summaries still cover every unit: the mean-credit table counts all labelled calls
    r = big.rollouts
    counts = [int(n) for n in re.findall(r"n=(\d+)", page.split("<h2>Mean credit", 1)[1].split("</table>", 1)[0])]
    assert sum(counts[:6]) == r.num_calls


def test_sample_order_and_limit(big):
    sample, blamed = trajectory_sample(big, 50)
    assert sample.numel() == 50
    assert blamed.tolist() == blame_by_loop(big)
    assert (blamed[sample][:-1] >= blamed[sample][1:]).all()
    # after the blamed ones: failed trajectories with correct calls, other failed, then successes, in batch order
    everything, _ = trajectory_sample(big, 10_000)
    assert sorted(everything.tolist()) == list(range(2000))
    r = big.rollouts
    failed = r.outcome < 1
    good = M.units(r, big.recipes[0].call_credit).label == 1
    has_good = torch.zeros(2000, dtype=torch.bool).index_put_((r.call_traj[good],), torch.tensor(True))
    rest = everything[blamed[everything] == 0]
    cat = torch.where(failed & has_good, 0, torch.where(failed, 1, 2))[rest]
    assert (cat[:-1] <= cat[1:]).all()
    assert all((rest[cat == k][:-1] < rest[cat == k][1:]).all() for k in range(3))
    with pytest.raises(ValueError, match="≥ 0"):
        trajectory_sample(big, -1)


def test_small_batch_shows_everything_and_zero_shows_nothing(big):
    small = audit(make_rollouts(3, 4, seed=1), ["grpo"], bootstrap=0)
    page = render_html(small)
    assert len(shown_ids(page)) == 12 and "All 12 trajectories shown." in page and "left out" not in page
    none = render_html(big, max_trajectories=0)
    assert not shown_ids(none) and "2000 trajectories left out" in none and "<table class='metrics'>" in none


def test_default_audit_set_has_the_headline_recipe():
    assert "call_consensus" in DEFAULT_RECIPES
    result = audit(make_rollouts(4, 4, seed=0), bootstrap=0)
    assert [a.name for a in result.recipes] == list(DEFAULT_RECIPES)
