"""Agreement with verl 0.9.1's reference estimators on random trainer batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stepcredit.estimators import grpo, reinforce_pp_baseline, rloo
from stepcredit.io import from_trainer_tensors

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
pytestmark = pytest.mark.verl


def random_batch(seed: int, *, binary: bool, b: int = 96, t: int = 40):
    """Random group sizes (singletons included), some zero-variance groups, random masks with several
    generated turns, rewards at the last valid token (Gaussian or 0/1)."""
    g = torch.Generator().manual_seed(seed)
    sizes = []
    while sum(sizes) < b:
        sizes.append(int(torch.randint(1, 9, (1,), generator=g)))
    sizes[-1] -= sum(sizes) - b
    sizes = [s for s in sizes if s > 0]
    uids = np.array([f"uid-{k}" for k, s in enumerate(sizes) for _ in range(s)], dtype=object)
    perm = torch.randperm(b, generator=g).numpy()  # groups need not be contiguous
    uids = uids[perm]
    mask = (torch.rand(b, t, generator=g) < 0.7).float()
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = mask * (torch.arange(t)[None, :] < lengths[:, None]).float()
    mask[:, 0] = 1.0  # every response has at least one generated token
    last = (mask * torch.arange(t)[None, :]).argmax(1)
    scores = (torch.rand(b, generator=g) < 0.5).float() if binary else torch.randn(b, generator=g)
    # zero-variance groups: every member gets the first member's score (dyadic values are exact)
    for k in range(0, len(sizes), 3):
        rows = np.nonzero(uids == f"uid-{k}")[0]
        scores[rows] = 0.75 if not binary else float(k % 2)
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), last] = scores
    return rewards, mask, uids


def ours(estimator, rewards, mask, uids, **kw):
    r = from_trainer_tensors(mask, uids, token_level_rewards=rewards)
    return estimator(r, **kw).to_tokens(r)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("norm", [True, False])
def test_grpo_matches_verl(seed, binary, norm):
    rewards, mask, uids = random_batch(seed, binary=binary)
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, uids, norm_adv_by_std_in_grpo=norm)
    want_vec, _ = core_algos.compute_grpo_vectorized_outcome_advantage(
        rewards, mask, uids, norm_adv_by_std_in_grpo=norm
    )
    got = ours(grpo, rewards, mask, uids, norm="std" if norm else "mean")
    assert (got - want).abs().max() <= 1e-6
    assert (got - want_vec).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("estimator", "reference"),
    [
        (rloo, "compute_rloo_outcome_advantage"),
        (reinforce_pp_baseline, "compute_reinforce_plus_plus_baseline_outcome_advantage"),
    ],
    ids=["rloo", "reinforce_pp_baseline"],
)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("binary", [True, False])
def test_matches_verl(estimator, reference, seed, binary):
    rewards, mask, uids = random_batch(seed, binary=binary)
    want, _ = getattr(core_algos, reference)(rewards, mask, uids)
    got = ours(estimator, rewards, mask, uids)
    assert (got - want).abs().max() <= 1e-6


def test_constant_group_deviation_from_verl_is_rounding_noise():
    """verl returns (x − mean(x,…,x)) / (0 + 1e-6): an ulp of rounding in the mean, amplified a
    millionfold. stepcredit returns exactly 0, which is what the method means."""
    rewards = torch.zeros(7, 4)
    rewards[:, -1] = 0.7
    mask = torch.ones(7, 4)
    uids = np.array(["a"] * 7, dtype=object)
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, uids)
    assert want.abs().max() > 1e-3  # verl: noise
    assert torch.equal(ours(grpo, rewards, mask, uids), torch.zeros(7, 4))
