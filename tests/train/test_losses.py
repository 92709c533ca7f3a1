"""Losses: hand-computed cases, and equality with verl 0.9.1 on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from stepcredit.generation.scoring import entropy_from_logits
from stepcredit.train.losses import (
    agg_loss,
    kl_penalty,
    on_off_policy_loss,
    policy_shaping,
    ppo_clip_loss,
)

MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def random_batch(seed: int, b: int = 7, t: int = 11) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 3
    new = old + torch.randn(b, t, generator=g) * 0.4
    adv = torch.randn(b, t, generator=g) * 2
    mask = (torch.rand(b, t, generator=g) < 0.7).float()
    mask[0] = 0  # a sequence without tokens
    return new, old, adv, mask


def test_hand_computed_clip_and_dual_clip() -> None:
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 10.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, m = ppo_clip_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=3.0)
    # token 0: A>0, r=1.5 → clipped at 1.28 → −1.28; token 1: A>0, r=0.5 → −0.5 (min of r and clip is r)
    # token 2: A<0, r=1.5 → max(1.5, 1.28) = 1.5; token 3: A<0, r=10 → max(10, 1.28) = 10 → dual-clip at 3
    expected = torch.tensor([-1.28, -0.5, 1.5, 3.0])
    assert math.isclose(float(loss), float(expected.mean()), rel_tol=1e-6)
    assert m["clipfrac"] == pytest.approx(0.25) and m["clipfrac_lower"] == pytest.approx(0.25)


def test_aggregations_by_hand() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(agg_loss(loss, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(agg_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(agg_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    assert float(agg_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx((6 + 4) / 2 / 3)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        agg_loss(loss, mask, "mean")  # type: ignore[arg-type]


def test_kl_estimators_by_hand() -> None:
    lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert float(kl_penalty(lp, ref, "k1")) == pytest.approx(1.0)
    assert float(kl_penalty(lp, ref, "k2")) == pytest.approx(0.5)
    assert float(kl_penalty(lp, ref, "k3")) == pytest.approx(math.exp(-1) + 1 - 1)
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k9")  # type: ignore[arg-type]


def test_entropy_by_hand() -> None:
    assert float(entropy_from_logits(torch.zeros(4))) == pytest.approx(math.log(4))
    assert float(entropy_from_logits(torch.tensor([0.0, -1e4]))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.verl
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", MODES)
def test_policy_loss_equals_verl(seed: int, mode: str) -> None:
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    from verl.workers.config.actor import ActorConfig

    new, old, adv, mask = random_batch(seed)
    config = ActorConfig(strategy="fsdp", clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                         rollout_n=1, ppo_micro_batch_size_per_gpu=1)
    ref, ref_metrics = core_algos.compute_policy_loss_vanilla(old, new, adv, mask, loss_agg_mode=mode, config=config)
    ours, metrics = ppo_clip_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=3.0, agg=mode)  # type: ignore[arg-type]
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    assert metrics["clipfrac"] == pytest.approx(ref_metrics["actor/pg_clipfrac"], abs=1e-6)
    assert metrics["clipfrac_lower"] == pytest.approx(ref_metrics["actor/pg_clipfrac_lower"], abs=1e-6)
    assert metrics["ppo_kl"] == pytest.approx(ref_metrics["actor/ppo_kl"], abs=1e-6)
    torch.testing.assert_close(agg_loss(adv, mask, mode), core_algos.agg_loss(adv, mask, mode))  # type: ignore[arg-type]


@pytest.mark.verl
@pytest.mark.parametrize("kind", ["k1", "abs", "k2", "k3", "low_var_kl"])
def test_kl_equals_verl(kind: str) -> None:
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    new, old, _, _ = random_batch(3)
    torch.testing.assert_close(kl_penalty(new, old, kind), core_algos.kl_penalty(new, old, kind))  # type: ignore[arg-type]


@pytest.mark.verl
def test_entropy_equals_verl() -> None:
    verl_f = pytest.importorskip("verl.utils.torch_functional")
    logits = torch.randn(5, 9, 33, generator=torch.Generator().manual_seed(0)) * 4
    torch.testing.assert_close(entropy_from_logits(logits), verl_f.entropy_from_logits(logits))


# ------------------------------------------------------------------ Critique-GRPO's policy shaping
def test_policy_shaping_value_and_gradient() -> None:
    log_p = torch.log(torch.tensor([0.01, 0.1, 0.5, 0.99], dtype=torch.float64)).requires_grad_(True)
    f = policy_shaping(log_p, gamma=0.1)
    p = log_p.detach().exp()
    torch.testing.assert_close(f.detach(), p / (p + 0.1))
    (grad,) = torch.autograd.grad(f.sum(), log_p)
    torch.testing.assert_close(grad, 0.1 * p / (p + 0.1) ** 2)  # d f / d log p = γ p / (p + γ)²
    assert int(torch.argmax(grad)) == 1  # largest where p = γ
    with pytest.raises(ValueError, match="gamma"):
        policy_shaping(log_p, gamma=0.0)


def test_on_off_policy_loss_by_token() -> None:
    g = torch.Generator().manual_seed(3)
    log_p = -torch.rand(3, 6, generator=g, dtype=torch.float64) * 3
    old = log_p + 0.3 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, -1] = False
    off = torch.zeros(3, 6, dtype=torch.bool)
    off[2] = True  # the last row is the refinement
    # the paper's recipe: no clip, Σ ℓ / T ("loss_remove_token_mean"), written out from its definition
    p = log_p.exp()
    ref = torch.where(off, -adv * p / (p + 0.1), -adv * torch.exp(log_p - old))
    expected = (ref * mask).sum() / mask.shape[-1]
    loss, metrics = on_off_policy_loss(log_p, old, adv, mask, off, clip=False, agg="seq-mean-token-sum-norm")
    torch.testing.assert_close(loss, expected / 3)  # seq-mean over the 3 rows of Σ_t ℓ / T
    torch.testing.assert_close(on_off_policy_loss(log_p, old, adv, mask, off, clip=False, agg="token-sum")[0]
                               / mask.shape[-1], expected)
    assert metrics["off_policy_prob"] == pytest.approx(float(p[2, :5].mean()))
    # off-policy tokens never read the old policy; with clipping the on-policy ones are ppo_clip_loss's
    moved = old.clone()
    moved[2] += 5.0
    torch.testing.assert_close(on_off_policy_loss(log_p, moved, adv, mask, off)[0],
                               on_off_policy_loss(log_p, old, adv, mask, off)[0])
    on_only = mask & ~off
    clipped, _ = on_off_policy_loss(log_p, old, adv, on_only, off, agg="token-sum")
    ppo, _ = ppo_clip_loss(log_p, old, adv, on_only, agg="token-sum")
    torch.testing.assert_close(clipped, ppo)
