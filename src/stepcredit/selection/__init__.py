"""Selection components: gates, filters and samplers over trajectories and groups."""

from stepcredit.selection.sampling import abs_adv_sampling

__all__ = ["abs_adv_sampling"]
