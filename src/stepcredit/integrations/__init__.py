"""Adapters to the trainers people already use: verl (registered estimators, a v1 trainer mode, the
verl-agent step-row layout) and TRL (a ``GRPOTrainer`` subclass). The shared part: a trainer's token
rows as trajectories (``RowBatch``), any recipe on them, credit back on the rows' tokens.

Importing this package imports neither verl nor TRL; ``stepcredit.integrations.verl_trainer`` and
``stepcredit.integrations.trl`` do.
"""

from stepcredit.integrations._calls import CallIdentity, name_calls, parse_call_text
from stepcredit.integrations._rows import RowBatch, RowCredit, credit_metrics

__all__ = ["CallIdentity", "RowBatch", "RowCredit", "credit_metrics", "name_calls", "parse_call_text"]
