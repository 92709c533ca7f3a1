"""The registry of named recipe components: shaping, selection and credit.

* **shaping** ``fn(rollouts, **params) -> Rollouts`` — transforms rewards (same trajectories);
* **selection** ``fn(rollouts, **params) -> Tensor`` — indices of the trajectories to keep (or
  ``(indices, outcome)`` to also re-score the kept ones); a selection registered with
  ``needs_credit=True`` is ``fn(rollouts, credit, **params)`` and runs after credit;
* **credit** ``fn(rollouts, **params) -> Credit`` — an estimator.

Components are pure functions; a recipe is their composition. No component knows about another.

Parameters are checked once, here, from the type hints of the component's keyword parameters —
``Literal`` choices, ``int`` / ``float`` / ``bool`` / ``str``, unions, lists, and ranges written as
``Annotated[float, Interval(0, 1)]`` (aliases below) — both when a recipe is loaded and when the
registered function is called directly; the components themselves only check what relates several
parameters or the data.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from stepcredit.core.errors import show

__all__ = [
    "KINDS",
    "REGISTRY",
    "Component",
    "Count",
    "Interval",
    "Kind",
    "NonNegative",
    "OpenUnit",
    "Positive",
    "PositiveInt",
    "Probability",
    "Seed",
    "UserCode",
    "check_fields",
    "check_params",
    "component_params",
    "describe",
    "get",
    "import_callable",
    "options",
    "register",
]

Kind = Literal["shaping", "selection", "credit"]
KINDS: tuple[Kind, ...] = ("shaping", "selection", "credit")


@dataclass(frozen=True)
class Interval:
    """A range for a numeric parameter: ``Annotated[float, Interval(0, 1)]`` is a probability."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: object) -> bool:
        if not isinstance(x, int | float) or isinstance(x, bool) or (isinstance(x, float) and math.isnan(x)):
            return False  # (ints compare exactly with the bounds, however large)
        lo_ok = self.low is None or (x > self.low if self.low_open else x >= self.low)
        hi_ok = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


@dataclass(frozen=True)
class UserCode:
    """Marks a parameter that may name user code as ``"module:function"`` (imported and called on the
    log's data): recipes may set it only when imports are allowed."""


Probability = Annotated[float, Interval(0, 1)]
OpenUnit = Annotated[float, Interval(0, 1, low_open=True, high_open=True)]
NonNegative = Annotated[float, Interval(0)]
Positive = Annotated[float, Interval(0, low_open=True)]
PositiveInt = Annotated[int, Interval(1, 2**62)]
Count = Annotated[int, Interval(0, 2**62)]
Seed = Annotated[int, Interval(0, 2**63 - 1)]
"""A seed of torch's generator: 0 ≤ seed < 2⁶³."""


def _marked(hint: Any, marker: type) -> bool:
    if typing.get_origin(hint) is Annotated:
        return any(m is marker or isinstance(m, marker) for m in typing.get_args(hint)[1:])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_marked(h, marker) for h in typing.get_args(hint))
    return False


def _finite(value: int | float) -> bool:
    """A finite float, or an int a float can hold (an int past float's range is no finite number)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _accepts(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        return _accepts(value, base) and all(value in m for m in meta if isinstance(m, Interval))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_accepts(v, item) for v in value)
    if origin is tuple:  # fixed length (a YAML list stands for it)
        items = typing.get_args(hint)
        return (
            isinstance(value, list | tuple)
            and len(value) == len(items)
            and all(_accepts(v, h) for v, h in zip(value, items, strict=True))
        )
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, Mapping) and all(_accepts(k, key) and _accepts(v, item) for k, v in value.items())
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is collections.abc.Callable:
        return callable(value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation we do not check


def describe(hint: Any) -> str:
    """What a type hint accepts, in words."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        ranges = [str(m) for m in meta if isinstance(m, Interval)]
        return " ".join([describe(base), *ranges])
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))}: " + ", ".join(describe(h) for h in typing.get_args(hint))
    if origin is dict:
        key = (typing.get_args(hint) or (Any,))[0]
        return "a mapping" + (f" of {describe(key)} keys" if key is not Any else "")
    if hint is float:
        return "a finite number"
    if origin is collections.abc.Callable:
        return "a callable (from Python)"
    return getattr(hint, "__name__", str(hint))


@functools.cache
def _params(fn: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    return {
        name: (hints.get(name, Any), p.default)
        for name, p in sig.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def check_params(name: str, fn: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """``ValueError`` naming ``name.param`` and what it accepts, for the first keyword value of
    ``params`` its type hint rejects (unknown names are left to the caller)."""
    accepted = _params(inspect.unwrap(fn))
    for key, value in params.items():
        if key in accepted and not _accepts(value, accepted[key][0]):
            raise ValueError(f"{name}.{key} must be {describe(accepted[key][0])}, got {show(value)}")


@dataclass(frozen=True)
class Component:
    kind: Kind
    name: str
    fn: Callable[..., Any]
    needs_credit: bool = False

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line."""
        doc = inspect.cleandoc(self.fn.__doc__ or "")
        return " ".join(doc.split("\n\n")[0].split())

    @property
    def params(self) -> dict[str, tuple[Any, Any]]:
        """Keyword parameters: name → (type hint, default)."""
        return _params(inspect.unwrap(self.fn))

    @property
    def code_params(self) -> list[str]:
        """The parameters marked ``UserCode`` (they may name ``"module:function"``)."""
        return [name for name, (hint, _) in self.params.items() if _marked(hint, UserCode)]


def component_params(component: Component) -> dict[str, tuple[Any, Any]]:
    """Keyword parameters of a component: name → (type hint, default)."""
    return component.params


REGISTRY: dict[Kind, dict[str, Component]] = {kind: {} for kind in KINDS}


F = TypeVar("F", bound=Callable[..., Any])


def register(kind: Kind, name: str | None = None, *, needs_credit: bool = False) -> Callable[[F], F]:
    """Decorator: register ``fn`` as a ``kind`` component under ``name`` (default: its ``__name__``).

    The function returned checks its keyword arguments against its type hints on every call."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
    if needs_credit and kind != "selection":
        raise ValueError("only selection components can need credit")

    def deco(fn: F) -> F:
        key = name or fn.__name__
        existing = REGISTRY[kind].get(key)
        if existing is not None and inspect.unwrap(existing.fn) is not inspect.unwrap(fn):
            raise ValueError(f"a {kind} component named {key!r} is already registered ({existing.fn.__module__})")

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_params(key, fn, kwargs)
            return fn(*args, **kwargs)

        REGISTRY[kind][key] = Component(kind, key, checked, needs_credit)
        return typing.cast(F, checked)

    return deco


Opts = TypeVar("Opts")


def check_fields(cls: type, given: Mapping[str, Any], where: str, *, skip: tuple[str, ...] = ()) -> None:
    """Check ``given`` against the fields of the dataclass ``cls`` by their type hints, as a component's
    parameters are checked: unknown fields refused with the known ones listed, each value against its
    hint (``ValueError`` naming ``where.field`` and what it accepts). Fields in ``skip`` are left to the
    caller."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(given) - fields)
    if unknown:
        shown = ", ".join(show(k) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{where}: unknown key(s) [{shown}]; expected some of {sorted(fields)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in given.items():
        if key not in skip and not _accepts(value, hints[key]):
            raise ValueError(f"{where}.{key} must be {describe(hints[key])}, got {show(value)}")


def options(cls: type[Opts], given: Mapping[str, Any] | Opts | None, where: str) -> Opts:
    """``given`` as an instance of the options dataclass ``cls``, each field checked against its type
    hint as a component's parameters are (``check_fields``). ``None`` or ``{}`` give the defaults."""
    if isinstance(given, cls):
        given = {f.name: getattr(given, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{where} must be a mapping of options (or null to turn it off), got {show(given)}")
    try:
        check_fields(cls, given, where)
    except ValueError as exc:
        if "unknown key(s)" in str(exc):
            raise ValueError(str(exc).replace("unknown key(s)", "unknown option(s)", 1)) from None
        raise
    return cls(**given)


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
    return typing.cast(Callable[..., Any], fn)


def get(kind: Kind, name: str) -> Component:
    try:
        return REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY[kind])) or "none"
        raise KeyError(f"unknown {kind} component {name!r}; known: {known}") from None
