"""Credit estimators: pure functions ``(Rollouts, **params) -> Credit``, one module per family.

* ``outcome``: one advantage per trajectory — grpo (Dr.GRPO), rloo, reinforce_pp_baseline, ms_grpo;
* ``anchor``: steps compared within a decision point — gigpo;
* ``tree``: rollout trees — tree_grpo, treerl, treepo;
* ``turn``: turn-level rewards — mt_grpo (first turn, per index, per trajectory);
* ``tool``: tool calls — toolpo, action_anchor, call_consensus;
* ``evidence``: call_evidence — call_consensus's witnesses with rates fitted by EM, plus grounding and tool errors;
* ``step``: step rewards — step_grpo (SRL), prm_step (PRM-mixed step credit);
* ``oracle``: oracle (recipe name ``oracle``) — reads ground-truth labels; the yardstick, not a method;
* ``calibration``: brier (RLCR's Brier reward as an advantage; recipe name ``brier``).
"""

from stepcredit.estimators.anchor import gigpo
from stepcredit.estimators.calibration import brier
from stepcredit.estimators.evidence import call_evidence
from stepcredit.estimators.oracle import oracle
from stepcredit.estimators.outcome import grpo, ms_grpo, reinforce_pp_baseline, rloo
from stepcredit.estimators.step import prm_step, step_grpo
from stepcredit.estimators.tool import action_anchor, call_consensus, toolpo
from stepcredit.estimators.tree import tree_grpo, treepo, treerl
from stepcredit.estimators.turn import (
    mt_grpo,
    per_turn,
    per_turn_index,
)

__all__ = [
    "action_anchor",
    "brier",
    "call_consensus",
    "call_evidence",
    "gigpo",
    "grpo",
    "ms_grpo",
    "mt_grpo",
    "oracle",
    "per_turn",
    "per_turn_index",
    "prm_step",
    "reinforce_pp_baseline",
    "rloo",
    "step_grpo",
    "toolpo",
    "tree_grpo",
    "treepo",
    "treerl",
]
