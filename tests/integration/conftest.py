"""The integration tier: real servers on loopback (redis-server, a cluster made by redis-cli,
HTTP and S3 servers in threads), no process of ours (tests/support/isolation.py holds every
test here to it)."""

from __future__ import annotations

import pytest

from tests.support.isolation import confine


@pytest.fixture(autouse=True)
def _servers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    servers = frozenset({"redis-server", "redis-cli"})
    confine(monkeypatch, "tests/integration", programs=servers, network=True)
