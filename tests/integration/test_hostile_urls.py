"""Hostile URLs that are fine: spaces and non-ASCII in a path reach the file, fetched from a
real loopback HTTP server (tests/unit/test_hostile_urls.py: the address policy and the rest)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.support.http_server import http_server
from tests.support.paths import SAMPLES
from worker.fetch import fetch
from worker.settings import Settings

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("odd-names")
    for name in ("a b.jpg", "ü.jpg"):
        (root / name).write_bytes((SAMPLES / "cat.jpg").read_bytes())
    with http_server(root) as base:
        yield base


def test_spaces_and_non_ascii_reach_the_file(odd_names: str) -> None:
    settings = Settings(fetch_allow_networks=LOOPBACK)
    cat = (SAMPLES / "cat.jpg").read_bytes()
    assert fetch(f"{odd_names}/a b.jpg", settings).data == cat
    assert fetch(f"{odd_names}/ü.jpg", settings).data == cat
