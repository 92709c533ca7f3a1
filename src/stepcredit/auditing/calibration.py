"""Calibration of stated confidences against correctness (RLCR's evaluation metrics)."""

from __future__ import annotations

import torch
from torch import Tensor

from stepcredit.auditing.metrics import auroc


def _valid(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    ok = torch.isfinite(confidence) & (confidence >= 0) & (confidence <= 1)
    return confidence[ok].double(), correct[ok].double()


def brier_score(confidence: Tensor, correct: Tensor) -> float:
    """Mean of (q − c)² over trajectories with a valid confidence (lower is better)."""
    q, c = _valid(confidence, correct)
    return float(((q - c) ** 2).mean()) if q.numel() else float("nan")


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = 10) -> float:
    """ECE with ``bins`` equal-width bins on [0, 1]: Σ_b (|B_b| / n) · |accuracy(B_b) − mean q(B_b)|;
    q = 1 falls in the last bin."""
    q, c = _valid(confidence, correct)
    if q.numel() == 0:
        return float("nan")
    b = torch.clamp((q * bins).long(), max=bins - 1)
    acc = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, c)
    conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, q)
    return float(((acc - conf).abs()).sum() / q.numel())


def confidence_auroc(confidence: Tensor, correct: Tensor) -> float:
    """AUROC of the confidence as a score for correctness (0.5: no discrimination)."""
    q, c = _valid(confidence, correct)
    return auroc(q, c > 0.5)
