"""The last stage: measuring credit against step / call labels (``audit``), the HTML report, and
calibration of stated confidences."""

from stepcredit.auditing.calibration import brier_score, confidence_auroc, expected_calibration_error
from stepcredit.auditing.metrics import auroc, blame_rate
from stepcredit.auditing.report import markdown_table, write_report
from stepcredit.auditing.run import DEFAULT_RECIPES, Audit, RecipeAudit, audit

__all__ = [
    "DEFAULT_RECIPES",
    "Audit",
    "RecipeAudit",
    "audit",
    "auroc",
    "blame_rate",
    "brier_score",
    "confidence_auroc",
    "expected_calibration_error",
    "markdown_table",
    "write_report",
]
