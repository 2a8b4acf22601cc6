"""Admission control against a private real redis-server (no worker: these only look at the
queue lists and INFO): how often a client reads a queue's limit, limits under a key prefix,
and the shipped producer user's rights and its RedisFull without numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from core.connections import RedisConfig
from core.errors import QueueFull, RedisFull
from producer import Client
from producer.limits import Admission, get_limit, limits_key, set_limit
from tests.support.full_redis import (
    depth,
    fill,
    r_fixture,  # noqa: F401  (the fixture `r`)
    server_fixture,  # noqa: F401  (the fixture `server`)
)
from tests.support.redis_server import RedisServer, with_shipped_users


def test_a_client_reads_the_limit_at_most_every_few_seconds(
    server: RedisServer, r: redis.Redis
) -> None:
    def calls(command: str) -> int:
        stats = r.info("commandstats").get(f"cmdstat_{command}", {})
        return int(stats.get("calls", 0))

    config = RedisConfig()
    now = [100.0]
    admission = Admission(r, config, clock=lambda: now[0])
    llens = calls("llen")
    admission.check("celery", 1000)  # no limit: the depth is not read
    assert calls("llen") == llens
    set_limit(r, config, "celery", 2)
    hgets = calls("hget")
    for _ in range(5):
        admission.check("celery", 1)  # the cached "no limit" for 5 s
    assert calls("hget") == hgets
    now[0] += 5.0
    admission.check("celery", 1)
    assert calls("hget") == hgets + 1 and calls("llen") == llens + 10  # one pipelined read
    with pytest.raises(QueueFull):
        admission.check("celery", 3)
    assert calls("hget") == hgets + 1


def test_limits_live_under_the_key_prefix(server: RedisServer, r: redis.Redis) -> None:
    config = RedisConfig(key_prefix="t1:")
    assert limits_key(config) == "t1:imgqueue:limits"
    set_limit(r, config, "celery", 1)
    assert get_limit(r, RedisConfig(), "celery") is None  # another tenant's
    with Client(server.url(), key_prefix="t1:", bulk_size=1) as client:
        client.submit("cat.jpg")
        assert depth(r, prefix="t1:") == 1
        with pytest.raises(QueueFull):
            client.submit("cat.jpg")
    with Client(server.url(), bulk_size=1) as other:
        other.submit_many(["cat.jpg"] * 3)


def test_shipped_producer_user_reads_limits_and_gets_redis_full(tmp_path: Path) -> None:
    """deploy/redis.conf's users: the producer reads the limits (and may not change them); it
    may not run INFO, so its RedisFull has no numbers but still says full."""
    server = with_shipped_users(tmp_path)
    base = f"127.0.0.1:{server.port}/0"
    admin = redis.Redis(port=server.port, username="admin", password="imgqueue-admin-dev")
    try:
        set_limit(admin, RedisConfig(), "celery", 1)
        with Client(f"redis://producer:imgqueue-producer-dev@{base}", bulk_size=1) as producer:
            producer.submit("cat.jpg")
            with pytest.raises(QueueFull):
                producer.submit("cat.jpg")
            with pytest.raises(redis.exceptions.NoPermissionError):
                set_limit(producer.redis, RedisConfig(), "celery", 1000)
            admin.delete("imgqueue:limits")
            producer.admission.ttl = 0
            admin.config_set("maxmemory-policy", "noeviction")
            fill(admin)
            with pytest.raises(RedisFull) as caught:
                producer.submit("cat.jpg")
            assert caught.value.used_memory is None
            assert str(caught.value).startswith("Redis is full: used memory > maxmemory")
    finally:
        admin.close()
        server.stop()
