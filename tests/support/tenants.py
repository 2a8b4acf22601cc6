"""What the tenant tests without a worker share: database 13 of the session's redis-server,
emptied around each test, and the key names as the shipped ACLs name them (no key prefix).

The fixtures `url` and `r` are defined here under those names; a test module imports
`url_fixture` and `r_fixture` (never called directly) to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from core.connections import RedisConfig
from tests.support.redis_server import RedisServer

DB = 13


CONFIG = RedisConfig()  # no key prefix: the keys as the shipped ACLs name them


@pytest.fixture(name="url")
def url_fixture(redis_server: RedisServer) -> str:
    return redis_server.url(DB)


@pytest.fixture(name="r")
def r_fixture(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
