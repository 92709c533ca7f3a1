"""The generation caps shared by the ``rollouts`` command and training configs: one number each, so a
config cannot ask for what the command line refuses (and neither for a job that cannot finish)."""

from __future__ import annotations

__all__ = ["MAX_GROUP_SIZE", "MAX_NEW_TOKENS", "MAX_TREE", "MAX_TREE_LEAVES", "tree_leaves"]

MAX_NEW_TOKENS = 4096
"""Tokens a model policy may generate for one action."""
MAX_GROUP_SIZE = 1000
"""Chains per task."""
MAX_TREE = (1000, 1000, 100)
"""Tree-GRPO's M (trees per task), N (nodes expanded per iteration) and L (iterations), each at most."""
MAX_TREE_LEAVES = 10_000
"""Leaves one task's trees may hold in all, ``M · (1 + N · L)``."""


def tree_leaves(m: int, n: int, iterations: int) -> int:
    """The leaves of one task's trees: ``M`` roots' chains, then ``N`` new chains per tree per iteration."""
    return m * (1 + n * iterations)
