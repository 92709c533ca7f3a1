"""Static check of the package's import graph: no import circle, no private import across packages.

Reads every module of ``src/stepcredit`` with ``ast`` (nothing is imported). Two rules:

* **No circle** among the modules' imports, counting imports inside functions and under
  ``if TYPE_CHECKING:`` too (a lazy or typing-only import still ties the two modules together).
* **No private import across packages**: a module may import a name or module whose path has a part
  starting with ``_`` (``stepcredit.estimators._context``, ``from stepcredit.core.batch import _helper``) only
  from inside the package that holds it.

Prints one line per violation and exits 1 when there is any; ``make lint`` and ``make test`` run it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "stepcredit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(path: Path, modules: set[str]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of the package in ``path``."""
    name = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    package = name if is_package(path) else name.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        found.append((alias.name, None, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:
                    full = f"{target}.{alias.name}"
                    if full in modules:
                        found.append((full, None, child.lineno))
                    else:
                        found.append((target, alias.name, child.lineno))
            visit(child)

    visit(tree)
    return found


def owner(module: str) -> str:
    """The package a module belongs to (itself for a package's ``__init__``)."""
    return module.rpartition(".")[0]


def private_part(module: str, name: str | None) -> bool:
    parts = module.split(".") + ([name] if name else [])
    return any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def main() -> int:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in paths}
    packages = {module_name(p) for p in paths if is_package(p)}
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for path in paths:
        src = module_name(path)
        src_pkg = src if src in packages else owner(src)
        edges = graph.setdefault(src, set())
        ancestors = {".".join(src.split(".")[:k]) for k in range(1, src.count(".") + 1)}
        for target, name, line in imports(path, modules):
            edges.add(target)
            # importing a.b.c runs a/b/__init__ first: an edge to every package above the target, but
            # the source's own (its package is being imported already when it runs)
            parts = target.split(".")
            edges.update(p for p in (".".join(parts[:k]) for k in range(1, len(parts))) if p not in ancestors)
            if private_part(target, name):
                # the private part's package: everything up to the first private component
                parts = target.split(".") + ([name] if name else [])
                first = next(i for i, p in enumerate(parts) if i and p.startswith("_") and not p.startswith("__"))
                # the package that holds the private part: a private module's package, or the package of
                # the module that holds a private name
                home = ".".join(parts[:first])
                if home not in packages:
                    home = owner(home)
                if not (src_pkg == home or src_pkg.startswith(home + ".")):
                    shown = f"{target}.{name}" if name else target
                    problems.append(f"{path.relative_to(ROOT.parent)}:{line}: private import across packages: {shown}")
    # an edge to a package is an edge to its __init__ (a package re-exporting its submodules is one;
    # a circle appears only when such a submodule imports the package back)
    problems.extend(_circles(graph, packages))
    for line in problems:
        print(line)
    return 1 if problems else 0


def _circles(graph: dict[str, set[str]], packages: set[str]) -> list[str]:
    """One line per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[str] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append("import circle: " + " -> ".join(sorted(component)))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
