"""Policies and the rollout engine: scripted policies, the Hugging Face policy, chains and trees.

``rollout_chains`` / ``rollout_trees`` play any ``Policy`` on a family of ``stepcredit.envs`` and return a
``RolloutBatch``: a ``Rollouts`` (labels, trees, token spans) plus what training needs beside it.
``HFPolicy`` (in ``stepcredit.rollout.hf``, imported on demand: it needs ``transformers``) wraps any
causal LM. Beside the engine, the generation side of the feedback methods: ``rollout_critique_chains``
(Critique-GRPO's refinements), ``hints`` (OpenClaw-RL's judge and hinted teacher contexts) and ``skills``
(SkillRL's experience bank).
"""

from stepcredit.rollout.chat_format import ChatFormat
from stepcredit.rollout.critique import rollout_critique_chains
from stepcredit.rollout.engine import Node, RolloutBatch, rollout_chains, rollout_trees
from stepcredit.rollout.policy import Context, Generation, Policy
from stepcredit.rollout.scripted import NoisyOracle, OraclePolicy, SystematicOracle, scripted_policy

__all__ = [
    "ChatFormat",
    "Context",
    "Generation",
    "Node",
    "NoisyOracle",
    "OraclePolicy",
    "Policy",
    "RolloutBatch",
    "SystematicOracle",
    "rollout_chains",
    "rollout_critique_chains",
    "rollout_trees",
    "scripted_policy",
]
