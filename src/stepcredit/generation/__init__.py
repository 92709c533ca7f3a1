"""Policies and the rollout engine: scripted policies, the Hugging Face policy, chains and trees.

``rollout_chains`` / ``rollout_trees`` play any ``Policy`` on a family of ``stepcredit.envs`` and return a
``TrainingBatch``: a ``Rollouts`` (labels, trees, token spans) plus what training needs beside it.
``HFPolicy`` (in ``stepcredit.generation.hf``, imported on demand: it needs ``transformers``) wraps any
causal LM; ``tiny_policy`` (``generation.tiny``) builds a small one locally. ``generation.scoring``
holds the teacher-forced log-probabilities every trainer pass uses. The feedback methods' own
generation steps live with them, in ``stepcredit.feedback``.
"""

from stepcredit.generation.chat_format import ChatFormat
from stepcredit.generation.engine import Node, TrainingBatch, rollout_chains, rollout_trees
from stepcredit.generation.policy import Context, Generation, Policy
from stepcredit.generation.scripted import NoisyOracle, OraclePolicy, SystematicOracle, scripted_policy

__all__ = [
    "ChatFormat",
    "Context",
    "Generation",
    "Node",
    "NoisyOracle",
    "OraclePolicy",
    "Policy",
    "SystematicOracle",
    "TrainingBatch",
    "rollout_chains",
    "rollout_trees",
    "scripted_policy",
]
