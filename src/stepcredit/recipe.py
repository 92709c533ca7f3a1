"""Recipes: a whole credit pipeline named in one small config.

    shaping:   [...]                                   # reward transforms, in order
    selection: [{zero_variance_filter: {}}, ...]       # gates / samplers, in order
    credit:    [{grpo: {norm: std}}, {toolpo: {weight: 0.5}}]   # weighted sum of estimators

An item is a component name or ``{name: {param: value, ...}}``; credit items may carry ``weight``
(default 1). Selections that need credit (e.g. ``abs_adv_sampling``) come last in their list and run
after the credit stage. Everything is checked when the recipe is built: unknown stages, components or
parameters, and parameter values of the wrong type, each with a message that lists what is accepted.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

import stepcredit.estimators  # registers the estimators
import stepcredit.selection  # registers the selections
import stepcredit.shaping  # noqa: F401 - registers the shaping components
from stepcredit.core import Rollouts
from stepcredit.core.credit import Credit
from stepcredit.core.errors import clip, show
from stepcredit.core.registry import KINDS, Component, Kind, check_params, get


class RecipeError(ValueError):
    """A recipe that cannot be built as written (one line, bounded: names and values in it come from
    the recipe file)."""

    def __init__(self, message: str) -> None:
        super().__init__(clip(message, 600))


@dataclass(frozen=True)
class RecipeStep:
    """One component of a recipe with its parameters (and, for credit, its weight)."""

    component: Component
    params: Mapping[str, Any]
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.component.name

    def to_item(self) -> dict[str, dict[str, Any]]:
        params = dict(self.params)
        if self.component.kind == "credit" and self.weight != 1.0:
            params["weight"] = self.weight
        return {self.name: params}


@dataclass(frozen=True)
class RecipeResult:
    """What running a recipe gives: the (selected) rollouts, their credit, and which of the input's
    trajectories were kept (indices into the input batch, in output order)."""

    rollouts: Rollouts
    credit: Credit
    kept: Tensor


class _SafeLoader(yaml.SafeLoader):
    """YAML without its bombs: what aliases expand to is counted (a 400-byte "billion laughs" names
    a billion nodes) and bounded; nesting depth is bounded by the parser's recursion; a key given
    twice in one mapping is refused (YAML would keep the last one silently)."""

    max_expanded = 10_000  # nodes that aliases may stand for, in all

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event: yaml.AliasEvent = self.peek_event()  # type: ignore[no-untyped-call]
            node = self.anchors.get(event.anchor)
            if node is not None:
                memo: dict[int, int] = self.__dict__.setdefault("_sizes", {})
                self.expanded = getattr(self, "expanded", 0) + _expanded_size(node, memo)
                if self.expanded > self.max_expanded:
                    raise RecipeError(
                        f"aliases (*name) expand to more than {self.max_expanded} values: not a recipe"
                    )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node, deep=deep)
                    if isinstance(key, str | int | float | bool) or key is None:
                        if key in seen:
                            line = key_node.start_mark.line + 1
                            raise RecipeError(f"line {line}: duplicate key {show(key)} (YAML keeps only the last)")
                        seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias in it is expanded (memoized per node)."""
    key = id(node)
    if key not in memo:
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        else:
            memo[key] = 1
    return memo[key]


def read_yaml(text: str, source: str) -> Any:
    """A YAML document (safe: no tags that build objects, aliases bounded), or ``RecipeError``."""
    try:
        return yaml.load(text, Loader=_SafeLoader)
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    except RecursionError:
        raise RecipeError(f"{source}: YAML nested too deeply to read") from None
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
        # ValueError: integers past Python's digit limit; Type/AttributeError: malformed explicit tags
        raise RecipeError(f"{source}: cannot read recipe ({show(str(exc))})") from None


def _names_code(value: Any) -> str | None:
    """The first ``"module:function"`` string in a parameter value (or its list items), if any."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and ":" in v:
            return v
    return None


def _step(kind: Kind, item: Any, where: str, allow_imports: bool = False) -> RecipeStep:
    params: Any
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, Mapping) and len(item) == 1:
        name, params = next(iter(item.items()))
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise RecipeError(f"{where}: parameters of {name!r} must be a mapping, got {type(params).__name__}")
    else:
        raise RecipeError(f"{where}: expected a component name or {{name: {{params}}}}, got {item!r}")
    try:
        component = get(kind, str(name))
    except KeyError as exc:
        raise RecipeError(f"{where}: {exc.args[0]}") from None
    params = dict(params)
    weight = 1.0
    if kind == "credit" and "weight" in params:
        weight = params.pop("weight")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight):
            raise RecipeError(f"{where}: weight of {name!r} must be a finite number, got {show(weight)}")
    accepted = component.params
    for key in params:
        if key not in accepted:
            listed = ", ".join(accepted) or "none"
            extra = ", weight" if kind == "credit" else ""
            raise RecipeError(f"{where}: {name!r} has no parameter {key!r}; accepted: {listed}{extra}")
    try:
        check_params(str(name), component.fn, params)
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    missing = [k for k, (_, default) in accepted.items() if default is inspect.Parameter.empty and k not in params]
    if missing:
        raise RecipeError(f"{where}: {name!r} needs {', '.join(missing)}")
    if not allow_imports:
        for key in component.code_params:
            code = _names_code(params.get(key))
            if code is not None:
                raise RecipeError(
                    f"{where}: {name}.{key} names user code {show(code)}, which would be imported and run on the "
                    "log's data; allow it with --allow-imports (Recipe.load(..., allow_imports=True))"
                )
    return RecipeStep(component, types.MappingProxyType(params), float(weight))


@dataclass(frozen=True)
class Recipe:
    """An ordered composition: shaping → selection → weighted sum of credit components."""

    name: str
    shaping: tuple[RecipeStep, ...] = ()
    selection: tuple[RecipeStep, ...] = ()
    credit: tuple[RecipeStep, ...] = field(default=())
    description: str = ""

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], name: str = "recipe", *, allow_imports: bool = False) -> Recipe:
        """A recipe from its config. A parameter that names user code (``"module:function"``: a
        verifier, a PRM scorer, a rubric check) imports and runs that code on the log's data, so it is
        refused unless ``allow_imports``."""
        if not isinstance(config, Mapping):
            raise RecipeError(f"{name}: a recipe is a mapping of stages, got {type(config).__name__}")
        unknown = set(config) - {*KINDS, "name", "description"}
        if unknown:
            listed = sorted(map(str, unknown))
            raise RecipeError(f"{name}: unknown stage(s) {listed}; expected shaping, selection, credit")
        name = str(config.get("name", name))
        stages: dict[str, tuple[RecipeStep, ...]] = {}
        for kind in KINDS:
            items = config.get(kind) or []
            if not isinstance(items, list):
                raise RecipeError(f"{name}: {kind} must be a list, got {type(items).__name__}")
            stages[kind] = tuple(
                _step(kind, item, f"{name}: {kind}[{i}]", allow_imports) for i, item in enumerate(items)
            )
        if not stages["credit"]:
            raise RecipeError(f"{name}: a recipe needs at least one credit component")
        needs = [s.component.needs_credit for s in stages["selection"]]
        if any(needs[i] and not needs[i + 1] for i in range(len(needs) - 1)):
            raise RecipeError(f"{name}: selections that need credit (e.g. abs_adv_sampling) must come last")
        return cls(name, stages["shaping"], stages["selection"], stages["credit"], str(config.get("description", "")))

    @classmethod
    def from_yaml(cls, path: str | Path, *, allow_imports: bool = False) -> Recipe:
        p = Path(path)
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as exc:
            raise RecipeError(f"{p}: cannot read recipe ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return cls.from_dict(read_yaml(text, str(p)), name=p.stem, allow_imports=allow_imports)

    @classmethod
    def builtin(cls, name: str) -> Recipe:
        files = builtin_recipes()
        if name not in files:
            raise RecipeError(f"unknown recipe {name!r}; built-in: {', '.join(sorted(files))} (or a YAML file path)")
        return cls.from_dict(read_yaml(files[name], name), name=name)

    @classmethod
    def load(cls, spec: str | Path | Mapping[str, Any] | Recipe, *, allow_imports: bool = False) -> Recipe:
        """A recipe from a built-in name, a YAML path or a dict. A built-in name wins over a file or
        folder of that name in the working directory; a path is a path when it ends in .yaml/.yml or
        names a folder (``./grpo.yaml``, ``recipes/x``). ``allow_imports``: see ``from_dict``."""
        if isinstance(spec, Recipe):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec, allow_imports=allow_imports)
        text = str(spec)
        if isinstance(spec, str) and text in builtin_recipes():
            return cls.builtin(text)
        path = Path(spec)
        if path.suffix in (".yaml", ".yml") or "/" in text or "\\" in text or isinstance(spec, Path):
            return cls.from_yaml(path, allow_imports=allow_imports)
        return cls.builtin(text)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        for kind in KINDS:
            steps = getattr(self, kind)
            if steps:
                out[kind] = [s.to_item() for s in steps]
        return out

    def run(self, rollouts: Rollouts) -> RecipeResult:
        """Shaping, then selection, then the weighted sum of credit, then credit-aware selection."""
        r = rollouts
        kept = torch.arange(r.num_trajectories, device=r.device)
        for s in self.shaping:
            shaped = s.component.fn(r, **s.params)
            if not isinstance(shaped, Rollouts) or shaped.num_trajectories != r.num_trajectories:
                raise RuntimeError(f"shaping component {s.name!r} must return Rollouts with the same trajectories")
            r = shaped
        late = [s for s in self.selection if s.component.needs_credit]
        for s in self.selection:
            if s.component.needs_credit:
                continue
            picked = s.component.fn(r, **s.params)
            idx, outcome = picked if isinstance(picked, tuple) else (picked, None)
            r, kept = r.select(idx), kept[idx]
            if outcome is not None:  # a gate that re-scores what it keeps (e.g. infeasible rollouts)
                r = r.replace(outcome=outcome)
        credit: Credit | None = None
        for s in self.credit:
            part = s.component.fn(r, **s.params).check(r, s.name)
            part = part if s.weight == 1.0 else part.scale(s.weight)
            credit = part if credit is None else credit + part
        assert credit is not None
        credit.check(r, f"{self.name} (the weighted sum)")  # finite parts can sum past float32
        for s in late:
            idx = s.component.fn(r, credit, **s.params)
            credit, r, kept = credit.select(r, idx), r.select(idx), kept[idx]
        return RecipeResult(r, credit, kept)


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe name → YAML text: every registered credit component as a recipe of itself (its
    defaults; the description is its docstring's first paragraph), and the compositions and configured
    variants in ``src/stepcredit/recipes/*.yaml`` (a file named like a component replaces its bare
    recipe)."""
    from stepcredit.core.registry import REGISTRY

    recipes = {
        name: yaml.safe_dump(
            {"name": name, "description": component.summary, "credit": [{name: {}}]}, sort_keys=False, width=10**6
        )
        for name, component in REGISTRY["credit"].items()
    }
    folder = resources.files("stepcredit") / "recipes"
    recipes.update(
        {
            entry.name.removesuffix(".yaml"): entry.read_text(encoding="utf-8")
            for entry in folder.iterdir()
            if entry.name.endswith(".yaml")
        }
    )
    return dict(sorted(recipes.items()))
