from __future__ import annotations

import torch

from stepcredit.core import summarize
from stepcredit.envs.synthetic import make_rollouts


def test_same_seed_same_rollouts_other_seed_differs():
    a, b, c = make_rollouts(8, 4, seed=5), make_rollouts(8, 4, seed=5), make_rollouts(8, 4, seed=6)
    assert torch.equal(a.outcome, b.outcome) and torch.equal(a.state, b.state)
    assert a.texts.call_arguments.to_pylist() == b.texts.call_arguments.to_pylist()
    assert not (torch.equal(a.step_offsets, c.step_offsets) and torch.equal(a.outcome, c.outcome))


def test_labels_are_consistent_with_outcomes():
    r = make_rollouts(32, 8, seed=0)
    success = r.outcome[r.step_traj[r.call_step]] == 1
    assert int(((r.call_label == -1) & success).sum()) == 0  # a wrong write always loses the task
    assert int(((r.call_label == 1) & ~success).sum()) > 0  # failed runs still hold correct calls
    s = summarize(r)
    assert 0.2 < s["success_rate"] < 0.8
