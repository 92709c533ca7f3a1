"""stepcredit: dense per-step and per-token credit for RL of tool-using LLM agents.

The public API is flat::

    from stepcredit import Rollouts, Credit, Recipe, load, from_trainer_tensors, audit, grpo, gigpo

The stages of the flow live in subpackages (``rollouts`` → ``io`` → ``shaping`` → ``selection`` →
``estimators`` → ``credit`` → ``auditing``); everything a user needs is importable from here.
"""

from stepcredit import segments
from stepcredit._buffers import release_buffers
from stepcredit.auditing import DEFAULT_RECIPES, Audit, audit, write_report
from stepcredit.credit import Credit
from stepcredit.envs import BookingEnv, CalculatorEnv, LookupEnv, ToolEnv, env_factory, parse_action
from stepcredit.errors import RolloutError
from stepcredit.estimators import (
    action_anchor,
    brier_credit,
    call_consensus,
    call_evidence,
    gigpo,
    grpo,
    ms_grpo,
    mt_grpo,
    mt_grpo_first_turn,
    mt_grpo_per_index,
    mt_grpo_per_trajectory,
    oracle_labels,
    per_turn,
    per_turn_index,
    prm_step,
    reinforce_pp_baseline,
    rloo,
    step_grpo,
    toolpo,
    tree_grpo,
    treepo,
    treerl,
)
from stepcredit.io import (
    ChatFields,
    from_trainer_tensors,
    iter_group_chunks,
    load,
    load_records,
    read_credit_jsonl,
    read_parquet,
    read_references,
    write_chat_jsonl,
    write_credit_jsonl,
    write_credit_parquet,
    write_parquet,
)
from stepcredit.recipe import Recipe, RecipeError, RecipeResult, builtin_recipes
from stepcredit.registry import register
from stepcredit.rollout import (
    ChatFormat,
    Context,
    Generation,
    NoisyOracle,
    OraclePolicy,
    Policy,
    RolloutBatch,
    SystematicOracle,
    rollout_chains,
    rollout_trees,
)
from stepcredit.rollout.tiny import tiny_policy
from stepcredit.rollouts import (
    CallRecord,
    Rollouts,
    StepKind,
    StepRecord,
    Texts,
    TrajectoryRecord,
    build,
    observation_states,
    summarize,
)
from stepcredit.selection import (
    abs_adv_sampling,
    accuracy_window,
    binary_gate,
    resample_on_correct,
    rubric_gate,
    zero_variance_filter,
)
from stepcredit.shaping import HFProcessRewardScorer, brier, expert_similarity, prm_mix
from stepcredit.streaming import stream_audit, stream_credit
from stepcredit.train import TrainConfig, train


def __getattr__(name: str) -> object:
    if name == "HFPolicy":  # needs transformers (the "hf" extra): imported on first use
        from stepcredit.rollout.hf import HFPolicy

        return HFPolicy
    raise AttributeError(f"module 'stepcredit' has no attribute {name!r}")


__all__ = [
    "DEFAULT_RECIPES",
    "Audit",
    "BookingEnv",
    "CalculatorEnv",
    "CallRecord",
    "ChatFields",
    "ChatFormat",
    "Context",
    "Credit",
    "Generation",
    "HFPolicy",
    "HFProcessRewardScorer",
    "LookupEnv",
    "NoisyOracle",
    "OraclePolicy",
    "Policy",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "RolloutBatch",
    "RolloutError",
    "Rollouts",
    "StepKind",
    "StepRecord",
    "SystematicOracle",
    "Texts",
    "ToolEnv",
    "TrainConfig",
    "TrajectoryRecord",
    "abs_adv_sampling",
    "accuracy_window",
    "action_anchor",
    "audit",
    "binary_gate",
    "brier",
    "brier_credit",
    "build",
    "builtin_recipes",
    "call_consensus",
    "call_evidence",
    "env_factory",
    "expert_similarity",
    "from_trainer_tensors",
    "gigpo",
    "grpo",
    "iter_group_chunks",
    "load",
    "load_records",
    "ms_grpo",
    "mt_grpo",
    "mt_grpo_first_turn",
    "mt_grpo_per_index",
    "mt_grpo_per_trajectory",
    "observation_states",
    "oracle_labels",
    "parse_action",
    "per_turn",
    "per_turn_index",
    "prm_mix",
    "prm_step",
    "read_credit_jsonl",
    "read_parquet",
    "read_references",
    "register",
    "reinforce_pp_baseline",
    "release_buffers",
    "resample_on_correct",
    "rloo",
    "rollout_chains",
    "rollout_trees",
    "rubric_gate",
    "segments",
    "step_grpo",
    "stream_audit",
    "stream_credit",
    "summarize",
    "tiny_policy",
    "toolpo",
    "train",
    "tree_grpo",
    "treepo",
    "treerl",
    "write_chat_jsonl",
    "write_credit_jsonl",
    "write_credit_parquet",
    "write_parquet",
    "write_report",
    "zero_variance_filter",
]
__version__ = "0.1.0"
