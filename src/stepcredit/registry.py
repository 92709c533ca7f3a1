"""The registry of named recipe components: shaping, selection and credit.

* **shaping** ``fn(rollouts, **params) -> Rollouts`` — transforms rewards (same trajectories);
* **selection** ``fn(rollouts, **params) -> Tensor`` — indices of the trajectories to keep (or
  ``(indices, outcome)`` to also re-score the kept ones); a selection registered with
  ``needs_credit=True`` is ``fn(rollouts, credit, **params)`` and runs after credit;
* **credit** ``fn(rollouts, **params) -> Credit`` — an estimator.

Components are pure functions; a recipe is their composition. No component knows about another.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["shaping", "selection", "credit"]
KINDS: tuple[Kind, ...] = ("shaping", "selection", "credit")


@dataclass(frozen=True)
class Component:
    kind: Kind
    name: str
    fn: Callable[..., Any]
    needs_credit: bool = False

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


REGISTRY: dict[Kind, dict[str, Component]] = {kind: {} for kind in KINDS}


def register(kind: Kind, name: str | None = None, *, needs_credit: bool = False) -> Callable[[Any], Any]:
    """Decorator: register ``fn`` as a ``kind`` component under ``name`` (default: its ``__name__``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
    if needs_credit and kind != "selection":
        raise ValueError("only selection components can need credit")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__
        existing = REGISTRY[kind].get(key)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"a {kind} component named {key!r} is already registered ({existing.fn.__module__})")
        REGISTRY[kind][key] = Component(kind, key, fn, needs_credit)
        return fn

    return deco


def import_callable(spec: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    """``spec`` itself when callable, else the function named by ``"module:function"`` (how YAML
    recipes name user code: verifiers, rubric checks, PRM scorers)."""
    if callable(spec):
        return spec
    module, sep, name = str(spec).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{what} must be a callable or 'module:function', got {spec!r}")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"{what} {spec!r} is not a callable")
    return fn


def get(kind: Kind, name: str) -> Component:
    try:
        return REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY[kind])) or "none"
        raise KeyError(f"unknown {kind} component {name!r}; known: {known}") from None
