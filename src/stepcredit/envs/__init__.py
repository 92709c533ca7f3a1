"""Tool-use task families with ground-truth step labels (the synthetic one the demo and tests use)."""

from stepcredit.envs.synthetic import make_records, make_rollouts, make_tree_records, make_tree_rollouts

__all__ = ["make_records", "make_rollouts", "make_tree_records", "make_tree_rollouts"]
