"""Our packages' import graph, read from the source with `ast` (nothing is imported): every
import counts, at the top, inside a function (a lazy import) and under TYPE_CHECKING alike.
tests/unit/test_import_graph.py holds the layout's rules to it; tests/unit/test_ops_deploy.py
checks that each image copies every module its code imports."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

PACKAGES = ("core", "worker", "producer", "services", "cli")


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module under `packages` by dotted name; a package's __init__ under the package's."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `name` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    # What a relative import is relative to: the package itself, or the module's package.
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                # `from package import module` imports that module; any other name, the
                # package (its __init__) or module that defines it.
                child = f"{target}.{alias.name}"
                found.add(child if child in modules else target)
    return {_known(m, modules) for m in found} - {"", name}


def _known(name: str, modules: dict[str, Path]) -> str:
    """`name`, or the closest enclosing module we know (`worker.x.y` of a name in worker.x);
    "" outside PACKAGES."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Each module's imports of modules in `packages`."""
    modules = _modules(root, packages)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None; depth-first, in name order (stable messages)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None
