"""The layout's rules, read from the imports: no cycles, and each side keeps to its own.

- `core` (the shared core) imports nothing of ours outside itself;
- `worker` and `producer` never import each other: what both use lives in `core`;
- `services` (no torch) import nothing from `worker`: what they share with it lives in `core`;
- `cli` is the top: nothing imports it but the `python -m producer` alias.

Every import counts: at the top, inside a function (a lazy import) and under TYPE_CHECKING
alike, so that a lower module never reaches up to the one that drives it (it takes a callback
instead). Read from the source with `ast`, nothing is imported (tests/support/import_graph.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.import_graph import find_cycle, graph

# Thin aliases kept for commands users already run (`python -m producer`, `python -m
# worker.exporter`): a module each, that only re-exports the command's new home.
ALIASES = frozenset({"producer.__main__", "worker.exporter"})


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


def test_services_never_import_the_worker() -> None:
    """They run on a producer install (no torch, no `worker/`): they reach workers through Redis
    only. What they share with the worker is core's: the URL policy and vetted connections the
    webhook sender and the worker's fetches obey alike (core/urls.py, core/addresses.py,
    core/vetted_http.py), the settings both read (core.settings), the events' outbox
    (core/outbox.py) and the metrics endpoint (core/endpoint.py)."""
    edges = graph()
    reached = {m for name, found in edges.items() if name.startswith("services.") for m in found}
    assert "core.contract" in reached and "core.vetted_http" in reached
    assert _reached(edges, "services") <= {"core", "producer"}
    assert not [m for m in reached if m == "worker" or m.startswith("worker.")]


def test_only_the_aliases_import_the_cli() -> None:
    edges = graph()
    importers = {name for name, found in edges.items() for m in found if m.startswith("cli")}
    assert {n for n in importers if not n.startswith("cli")} <= ALIASES


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
