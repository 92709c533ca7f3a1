"""Tool-use environments with ground-truth step labels (gymnasium), and the synthetic log generator.

Four task families, registered with gymnasium on import::

    import gymnasium, stepcredit.envs
    env = gymnasium.make("stepcredit/Calculator-v0", depth=4)

* ``stepcredit/Calculator-v0`` (``CalculatorEnv``): multi-step arithmetic through tools;
* ``stepcredit/Lookup-v0`` (``LookupEnv``): joins over a small users → orders → products database;
* ``stepcredit/Booking-v0`` (``BookingEnv``): an airline desk: read tools, then writes with
  preconditions; a rule-breaking write succeeds but dooms the task; several valid solutions;
* ``stepcredit/Search-v0`` (``SearchEnv``): multi-hop questions answered by BM25 searches over a
  corpus the task builds, with near-namesake distractors (needs ``bm25s``, in the ``envs`` extra).

See ``ToolEnv`` for the shared API (actions, labels, snapshots) and each module for its labelling rules.
"""

import functools
from collections.abc import Callable
from typing import Any

import gymnasium

from stepcredit.core.errors import show
from stepcredit.envs.actions import ParsedAction, ToolCall, format_call, parse_action
from stepcredit.envs.base import CORRECT, NEUTRAL, WRONG, Snapshot, Tool, ToolEnv, option_names
from stepcredit.envs.booking import BookingEnv
from stepcredit.envs.calculator import CalculatorEnv
from stepcredit.envs.lookup import LookupEnv
from stepcredit.envs.search import SearchEnv
from stepcredit.envs.synthetic import make_records, make_rollouts, make_tree_records, make_tree_rollouts

ENV_IDS = {
    "calculator": "stepcredit/Calculator-v0",
    "lookup": "stepcredit/Lookup-v0",
    "booking": "stepcredit/Booking-v0",
    "search": "stepcredit/Search-v0",
}
FAMILIES: dict[str, type[ToolEnv]] = {
    "calculator": CalculatorEnv,
    "lookup": LookupEnv,
    "booking": BookingEnv,
    "search": SearchEnv,
}



def family_of(name: str) -> str:
    """The family ``name`` names (``"booking"`` or its gymnasium id ``"stepcredit/Booking-v0"``), or
    ``ValueError``."""
    family = next((f for f, env_id in ENV_IDS.items() if name in (f, env_id)), None)
    if family is None:
        raise ValueError(f"unknown environment {show(name)}; expected one of {', '.join(FAMILIES)}")
    return family


def knobs(name: str) -> tuple[str, ...]:
    """The keyword options a family's environment takes (its constructor's and ``ToolEnv``'s), sorted."""
    return option_names(FAMILIES[family_of(name)])


def env_factory(name: str, **options: Any) -> Callable[[], ToolEnv]:
    """A function making fresh environments of the family ``name`` (``"booking"`` or its gymnasium id
    ``"stepcredit/Booking-v0"``) with the given options (checked now: an unknown option or a bad value
    raises ``ValueError``; ``knobs(name)`` lists them)."""
    family = family_of(name)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(str(k) for k in set(options) - set(knobs(family)))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {family}; expected some of {list(knobs(family))}")
    factory = functools.partial(FAMILIES[family], **options)
    try:
        factory()  # check the values once
    except TypeError as exc:
        raise ValueError(f"bad option for {family}: {exc}") from None
    return factory


for _family, _env_id in ENV_IDS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=f"{FAMILIES[_family].__module__}:{FAMILIES[_family].__name__}")

__all__ = [
    "CORRECT",
    "ENV_IDS",
    "FAMILIES",
    "NEUTRAL",
    "WRONG",
    "BookingEnv",
    "CalculatorEnv",
    "LookupEnv",
    "ParsedAction",
    "SearchEnv",
    "Snapshot",
    "Tool",
    "ToolCall",
    "ToolEnv",
    "env_factory",
    "family_of",
    "format_call",
    "knobs",
    "make_records",
    "make_rollouts",
    "make_tree_records",
    "make_tree_rollouts",
    "parse_action",
]
