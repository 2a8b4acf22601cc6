"""What the model-routing tests without a worker share: their own redis-server (the command
statistics reset before each test), a model's registry entry, and how many messages wait.

The fixtures `server` (module-scoped) and `r` (its client, the database emptied around each
test) are defined here under those names; a test module imports `server_fixture` and
`r_fixture` (never called directly) to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.messages import queued_messages
from tests.support.redis_server import RedisServer

ALPHA = {"name": "alpha", "model": "alpha", "arch": "resnet50", "version": "1", "weights": "w1"}


@pytest.fixture(name="server", scope="module")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("models")).start()
    yield srv
    srv.stop()


@pytest.fixture(name="r")
def r_fixture(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.flushdb()
    client.config_resetstat()
    yield client
    client.flushdb()
    client.close()


def waiting(r: redis.Redis, *queues: str) -> int:
    return len(queued_messages(r, list(queues)))
