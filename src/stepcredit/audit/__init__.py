"""Measuring credit against step / call labels."""

from stepcredit.audit.metrics import blame_rate

__all__ = ["blame_rate"]
