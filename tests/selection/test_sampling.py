from __future__ import annotations

import pytest
import torch

from stepcredit import Rollouts
from stepcredit.core.credit import Credit
from stepcredit.envs import make_rollouts
from stepcredit.selection import abs_adv_sampling, resample_on_correct


def setup():
    r = Rollouts(group=[0] * 6, outcome=[0.0] * 6, step_offsets=[0, 1, 2, 3, 4, 5, 5])
    c = Credit(torch.tensor([0.0, 1.0, -3.0, 0.0, 0.5, 2.0]))
    return r, c


def test_never_picks_zero_advantage_and_is_seeded():
    r, c = setup()
    picks = abs_adv_sampling(r, c, num_samples=3, seed=1)
    assert picks.tolist() == sorted(picks.tolist()) and len(picks) == 3
    assert not {0, 3} & set(picks.tolist())
    assert torch.equal(picks, abs_adv_sampling(r, c, num_samples=3, seed=1))
    assert len(abs_adv_sampling(r, c, num_samples=10)) == 4  # only 4 episodes have |A| > 0
    assert len(abs_adv_sampling(r, c, fraction=0.5)) == 3


def test_probability_follows_abs_advantage():
    r, c = setup()
    counts = torch.zeros(6)
    for seed in range(2000):
        counts[abs_adv_sampling(r, c, num_samples=1, seed=seed)] += 1
    p = counts / counts.sum()
    want = torch.tensor([0.0, 1.0, 3.0, 0.0, 0.5, 2.0]) / 6.5
    assert torch.allclose(p, want, atol=0.03)


def test_bad_arguments():
    r, c = setup()
    with pytest.raises(ValueError, match="exactly one"):
        abs_adv_sampling(r, c)
    with pytest.raises(ValueError, match="fraction"):
        abs_adv_sampling(r, c, fraction=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        abs_adv_sampling(r, c, num_samples=-1)
    zero = Credit(torch.zeros(6))
    assert abs_adv_sampling(r, zero, num_samples=2).numel() == 0


# ------------------------------------------------------------------- hostile input
@pytest.mark.parametrize("seed", [10**22, -1])
def test_seeds_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        resample_on_correct(make_rollouts(2, 4, seed=0), seed=seed)


def test_keep_out_of_range():
    with pytest.raises(ValueError, match="keep"):
        resample_on_correct(make_rollouts(2, 4, seed=0), keep=10**22)
