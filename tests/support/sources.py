"""Hostile sources for the fetch tests: an IMAGE_ROOT whose symlinks, FIFO and device node try
to leave it or hang a reader, and the misbehaving loopback HTTP server over it.

The module-scoped fixtures `tree` and `server` are defined here under those names; a test
module imports `tree_fixture` and `server_fixture` (never called directly) to use them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.http_server import http_server
from tests.support.paths import SAMPLES


@pytest.fixture(name="tree", scope="module")
def tree_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/img is IMAGE_ROOT; base/img2 is a sibling sharing its prefix; base/secret outside."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "img"
    (root / "sub").mkdir(parents=True)
    (base / "img2").mkdir()
    (base / "img2" / "cat.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (base / "secret.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (root / "cat.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (root / "big.jpg").write_bytes(b"\xff" * 5000)
    (root / "inside-link.jpg").symlink_to(root / "cat.jpg")
    (root / "escape.jpg").symlink_to(base / "secret.jpg")
    (root / "dir-escape").symlink_to(base)
    (root / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jpg")
    return root


@pytest.fixture(name="server", scope="module")
def server_fixture(tree: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """The loopback HTTP server over `tree`: its base URL and the hits on each path."""
    counters: dict[str, int] = {}
    with http_server(tree, counters) as base:
        yield base, counters
