"""Hostile sources, in this process: paths that try to leave IMAGE_ROOT (real files, symlinks,
a FIFO and a device node), and URLs that try to reach inside (SSRF), refused before any
connection (tests/integration/test_hostile_fetch.py: servers that stall, lie or inflate)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import SAMPLES
from tests.support.sources import (
    tree_fixture,  # noqa: F401  (the fixture `tree`)
)
from worker.errors import SourceNotAllowed, SourceNotFound, TooLarge
from worker.fetch import fetch
from worker.settings import Settings


def files(root: Path | None, **kw: Any) -> Settings:
    return Settings(image_root=root, **kw)


@pytest.mark.parametrize(
    "source",
    [
        "../secret.jpg",
        "sub/../../secret.jpg",
        "{base}/secret.jpg",
        "/etc/passwd",
        "escape.jpg",  # a symlink leading out
        "dir-escape/secret.jpg",  # a symlinked directory leading out
        "../img2/cat.jpg",  # prefix collision: img2 is not inside img
        "{base}/img2/cat.jpg",
        "zero.jpg",  # symlink to a device outside
        "cat.jpg\x00.png",
    ],
)
def test_paths_outside_image_root_are_refused(tree: Path, source: str) -> None:
    with pytest.raises(SourceNotAllowed):
        fetch(source.format(base=tree.parent), files(tree))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [("sub", "directory"), (".", "directory"), ("pipe.jpg", "not a regular file")],
)
def test_directories_and_fifos_are_refused_without_hanging(
    tree: Path, source: str, fragment: str
) -> None:
    started = time.monotonic()
    with pytest.raises(SourceNotAllowed, match=fragment):
        fetch(source, files(tree))
    assert time.monotonic() - started < 1


def test_device_nodes_inside_root_are_never_opened(tree: Path) -> None:
    dev = tree / "dev.jpg"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")
    try:
        with pytest.raises(SourceNotAllowed, match="not a regular file"):
            fetch("dev.jpg", files(tree))
    finally:
        dev.unlink()


def test_allowed_paths_and_limits(tree: Path) -> None:
    cat = (SAMPLES / "cat.jpg").read_bytes()
    assert fetch("cat.jpg", files(tree)).data == cat
    assert fetch(str(tree / "sub" / ".." / "cat.jpg"), files(tree)).data == cat
    assert fetch("inside-link.jpg", files(tree)).data == cat  # a symlink within root is fine
    with pytest.raises(SourceNotFound):
        fetch("missing.jpg", files(tree))
    with pytest.raises(TooLarge, match="MAX_IMAGE_BYTES"):
        fetch("big.jpg", files(tree, max_image_bytes=1000))
    with pytest.raises(SourceNotAllowed, match="IMAGE_ROOT is not set"):
        fetch("cat.jpg", files(None))


# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/cat.jpg",
        "gopher://127.0.0.1:6379/_INFO",
        "dict://127.0.0.1:6379/INFO",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
    ],
)
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(SourceNotAllowed, match="scheme"):
        fetch(url, Settings())


# Host spellings through fetch(); the address policy itself, range by range and with the
# allowlist, is a table in tests/unit/test_hostile_urls.py.
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f.1",
        "[::1]",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata: link-local
        "[fe80::1]",
        "0.0.0.0",
        "[::]",
        "100.64.0.1",  # CGNAT
        "[fc00::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
        "[::ffff:169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_blocked_by_default(host: str) -> None:
    started = time.monotonic()
    with pytest.raises(SourceNotAllowed, match="non-public address"):
        fetch(f"http://{host}:9/cat.jpg", Settings())
    assert time.monotonic() - started < 2  # refused before any connection attempt
