"""The admission tests' own redis-server, which refuses writes once full (`--maxmemory-policy
noeviction`), filling it, and a queue's depth.

The fixtures `server` (module-scoped) and `r` (its client; the database emptied and maxmemory
unset before and after each test) are defined here under those names; a test module imports
`server_fixture` and `r_fixture` (never called directly) to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from core.connections import RedisConfig
from tests.support.redis_server import RedisServer


@pytest.fixture(name="server", scope="module")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(
        tmp_path_factory.mktemp("admission"), extra=["--maxmemory-policy", "noeviction"]
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(name="r")
def r_fixture(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.config_set("maxmemory", 0)
    client.flushdb()
    yield client
    client.config_set("maxmemory", 0)
    client.flushdb()
    client.close()


def depth(r: redis.Redis, queue: str = "celery", prefix: str = "") -> int:
    from producer.queues import depth as queue_depth

    return queue_depth(r, RedisConfig(key_prefix=prefix), queue)


def fill(r: redis.Redis) -> None:
    """4 MiB of ballast, then maxmemory 1 MiB under what Redis uses: every write is refused.
    Small pieces, so that no large query buffer is counted in `used_memory` and freed later."""
    for i in range(128):
        r.set(f"ballast:{i}", b"x" * (32 << 10))
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - (1 << 20))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("one-more", b"x")
