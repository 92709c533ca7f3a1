"""Selection components: gates, filters and samplers over trajectories and groups."""

from stepcredit.selection.gates import accuracy_window, binary_gate, rubric_gate, zero_variance_filter
from stepcredit.selection.roc import resample_on_correct
from stepcredit.selection.sampling import abs_adv_sampling

__all__ = [
    "abs_adv_sampling",
    "accuracy_window",
    "binary_gate",
    "resample_on_correct",
    "rubric_gate",
    "zero_variance_filter",
]
