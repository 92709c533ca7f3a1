"""Measuring credit against step / call labels, and calibration of stated confidences."""

from stepcredit.audit.calibration import brier_score, confidence_auroc, expected_calibration_error
from stepcredit.audit.metrics import auroc, blame_rate

__all__ = ["auroc", "blame_rate", "brier_score", "confidence_auroc", "expected_calibration_error"]
