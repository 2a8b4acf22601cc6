"""The layout's rules, read from the imports: no cycles, and each side keeps to its own.

- `core` (the shared core) imports nothing of ours outside itself;
- `worker` and `producer` never import each other: what both use lives in `core`;
- `services` (no torch) never import the worker's model code or Celery app;
- `cli` is the top: nothing imports it but the `python -m producer` alias.

Every import counts: at the top, inside a function (a lazy import) and under TYPE_CHECKING
alike, so that a lower module never reaches up to the one that drives it (it takes a callback
instead). Read from the source with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "worker", "producer", "services", "cli")
# Thin aliases kept for commands users already run (`python -m producer`, `python -m
# worker.exporter`): a module each, that only re-exports the command's new home.
ALIASES = frozenset({"producer.__main__", "worker.exporter"})


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


def test_worker_and_producer_import_no_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: lazy, TYPE_CHECKING, relative and `from package import module`."""
    files = {
        "p/__init__.py": "import typing\nif typing.TYPE_CHECKING:\n    from p.a import A\n",
        "p/a.py": "import os\nfrom . import b\nfrom .sub import thing\n",
        "p/b.py": "def f():\n    from p.sub.c import g\n",
        "p/sub/__init__.py": "from ..b import f\nthing = 1\n",
        "p/sub/c.py": "import p.a\nfrom p import sub\n",
        "q/__init__.py": "from p.sub import c\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert graph(tmp_path, ("p", "q")) == {
        "p": {"p.a"},  # under TYPE_CHECKING
        "p.a": {"p.b", "p.sub"},  # relative: a module, and a name from a package's __init__
        "p.b": {"p.sub.c"},  # inside a function
        "p.sub": {"p.b"},  # relative, up a level
        "p.sub.c": {"p.a", "p.sub"},
        "q": {"p.sub.c"},  # across packages
    }
    assert find_cycle(graph(tmp_path, ("p", "q"))) == ["p.a", "p.b", "p.sub.c", "p.a"]
    edges = graph()
    assert "worker.settings" in edges["worker.celery_app"]
    assert "worker.celery_app" in edges["worker"]  # under TYPE_CHECKING and in a function


def _reached(edges: dict[str, set[str]], package: str) -> set[str]:
    """The packages (first name) that `package`'s modules import, aliases aside."""
    return {
        m.split(".")[0]
        for name, found in edges.items()
        if name.split(".")[0] == package and name not in ALIASES
        for m in found
    } - {package}


def test_the_core_imports_only_itself() -> None:
    assert _reached(graph(), "core") == set()


def test_worker_and_producer_never_import_each_other() -> None:
    edges = graph()
    assert _reached(edges, "worker") == {"core"}
    assert _reached(edges, "producer") == {"core"}


def test_services_never_import_the_model_or_the_celery_app() -> None:
    """They run on a producer install (no torch): they reach workers through Redis only.
    The webhook sender shares the worker's vetted HTTP fetch (worker/fetch.py), which imports
    neither torch nor Celery."""
    edges = graph()
    reached = {m for name, found in edges.items() if name.startswith("services.") for m in found}
    assert "core.contract" in reached
    banned = (
        "worker.model",
        "worker.celery_app",
        "worker.tasks",
        "worker.pipeline",
        "worker.runtime",
    )
    assert not [m for m in reached if m.startswith(banned)]


def test_only_the_aliases_import_the_cli() -> None:
    edges = graph()
    importers = {name for name, found in edges.items() for m in found if m.startswith("cli")}
    assert {n for n in importers if not n.startswith("cli")} <= ALIASES


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
