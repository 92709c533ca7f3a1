"""Adapters to the trainers people already use: verl (``verl``: registered estimators, a v1 trainer
mode, the verl-agent step-row layout, the plugin) and TRL (``trl``: a ``GRPOTrainer`` subclass). The
shared part: a trainer's token rows as trajectories (``rows.TrainerRows``), any recipe on them, credit
back on the rows' tokens; and tool calls named from their tokens (``calls``).

Importing this package imports nothing (the verl plugin imports it in every Ray worker);
``stepcredit.integrations.verl.trainer`` and ``stepcredit.integrations.trl`` import verl and TRL.
"""
