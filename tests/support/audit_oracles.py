"""The bootstrap as it was first written: every replicate as a dense (samples × units) weight matrix
``counts[:, u.group]``, with the headline metrics evaluated on those unit weights. Obviously right,
and O(samples · units) memory — the tests compare the group-statistics bootstrap with it, the audit
benchmark measures its peak. A frozen copy: it does not call the code it checks."""

from __future__ import annotations

import torch
from torch import Tensor

from stepcredit.auditing.metrics import HEADLINE, Units


def _rate(weights: Tensor, select: Tensor, hit: Tensor) -> Tensor:
    den = weights @ select.double()
    num = weights @ (select & hit).double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def _auroc(scores: Tensor, positive: Tensor, negative: Tensor, weights: Tensor) -> Tensor:
    scores = scores.double()
    uniq, bins = torch.unique(scores, return_inverse=True)
    b = weights.shape[0]
    neg_w = torch.zeros(b, uniq.numel(), dtype=torch.float64).index_add_(1, bins, weights * negative.double())
    below = torch.cumsum(neg_w, 1) - neg_w
    pos_w = weights * positive.double()
    num = (pos_w * (below[:, bins] + 0.5 * neg_w[:, bins])).sum(1)
    den = pos_w.sum(1) * neg_w.sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def dense_headline(u: Units, weights: Tensor) -> dict[str, Tensor]:
    """The headline metrics for dense unit weights ``(B, U)``."""
    ok = ~torch.isnan(u.credit)
    credit = torch.nan_to_num(u.credit)
    good, bad = (u.label == 1) & ok, (u.label == -1) & ok
    pos, neg = credit > 0, credit < 0
    return {
        "blame": _rate(weights, good & u.failed, neg),
        "false_praise": _rate(weights, bad & ~u.failed, pos),
        "bsa_failed": 0.5 * (_rate(weights, good & u.failed, pos) + _rate(weights, bad & u.failed, neg)),
        "bsa_all": 0.5 * (_rate(weights, good, pos) + _rate(weights, bad, neg)),
        "auroc_failed": _auroc(credit, good & u.failed, bad & u.failed, weights),
        "auroc_all": _auroc(credit, good, bad, weights),
    }


def dense_bootstrap_values(u: Units, num_groups: int, *, samples: int, seed: int = 0) -> dict[str, Tensor]:
    """Every replicate's headline metrics, evaluated on the dense (samples × units) weights."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(num_groups, (samples, num_groups), generator=gen)
    counts = torch.zeros(samples, num_groups, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(samples, num_groups, dtype=torch.float64)
    )
    return dense_headline(u, counts[:, u.group])


def dense_bootstrap_intervals(
    u: Units, num_groups: int, *, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``dense_bootstrap_values`` (the original ``bootstrap_intervals``)."""
    if samples <= 0:
        return {k: (float("nan"), float("nan")) for k in HEADLINE}
    values = dense_bootstrap_values(u, num_groups, samples=samples, seed=seed)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for k, v in values.items():
        v = v[~torch.isnan(v)]
        out[k] = (float(torch.quantile(v, lo)), float(torch.quantile(v, hi))) if v.numel() else (float("nan"),) * 2
    return out
