"""The data model: ``Rollouts`` (one batch, columnar and ragged), its column schema, the record
builder and the decision-point keys.

Everything the other stages (io, shaping, selection, estimators, credit, audit, and next the rollout
engine and the trainer) need to make or read a batch is here; nothing here imports them.
"""

from stepcredit.rollouts._batch import (
    COLUMNS,
    LABEL_VALUES,
    TEXT_COLUMNS,
    TOOL_ERROR,
    TOOL_OK,
    TOOL_UNKNOWN,
    Rollouts,
    StepKind,
    Texts,
    tool_ok_from_calls,
)
from stepcredit.rollouts._build import CallRecord, StatePolicy, StepRecord, TrajectoryRecord, build, canonical_json
from stepcredit.rollouts._columns import Check, Column, Level, column
from stepcredit.rollouts._states import distinct_states, history_states, observation_states, text_keys
from stepcredit.rollouts._summary import summarize

__all__ = [
    "COLUMNS",
    "LABEL_VALUES",
    "TEXT_COLUMNS",
    "TOOL_ERROR",
    "TOOL_OK",
    "TOOL_UNKNOWN",
    "CallRecord",
    "Check",
    "Column",
    "Level",
    "Rollouts",
    "StatePolicy",
    "StepKind",
    "StepRecord",
    "Texts",
    "TrajectoryRecord",
    "build",
    "canonical_json",
    "column",
    "distinct_states",
    "history_states",
    "observation_states",
    "summarize",
    "text_keys",
    "tool_ok_from_calls",
]
