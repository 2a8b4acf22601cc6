"""The delivery-layer tests' own redis-server (one per test module), a client that sends
message by message, and the dead letters' reasons.

The fixtures `dredis` (module-scoped) and `dclient` are defined here under those names; a test
module imports `dredis_fixture` and `dclient_fixture` (never called directly) to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.deadletters import DeadLetters
from producer import Client
from tests.support.redis_server import RedisServer


@pytest.fixture(name="dredis", scope="module")
def dredis_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("delivery-redis")).start()
    yield server
    server.stop()


@pytest.fixture(name="dclient")
def dclient_fixture(dredis: RedisServer) -> Iterator[Client]:
    with Client(dredis.url(), bulk_size=1) as c:  # the delivery layer, message by message
        yield c


def dead_letter_reasons(client: Client) -> list[str]:
    return sorted(e.reason for e in DeadLetters(client.redis, client.config).read())
