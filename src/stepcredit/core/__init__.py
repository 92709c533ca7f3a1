"""The core every stage imports, importing nothing above it: the data model (``Rollouts``: one batch,
columnar and ragged; its column schema, the record builder, the decision-point keys), ``Credit``, the
segment reductions, the component registry and the errors.
"""

from stepcredit.core.batch import (
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
from stepcredit.core.columns import Check, Column, Level, column
from stepcredit.core.credit import Credit
from stepcredit.core.errors import RolloutError
from stepcredit.core.records import (
    CallRecord,
    StatePolicy,
    StepRecord,
    TrajectoryRecord,
    build,
    canonical_json,
    distinct_states,
    history_states,
)
from stepcredit.core.states import observation_states, text_keys
from stepcredit.core.summary import summarize

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
    "Credit",
    "Level",
    "RolloutError",
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
