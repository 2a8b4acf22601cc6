"""Redis' memory as the producer's snapshot and the exporter read it, and a result's size measured
on stored results: against a private redis-server with a maxmemory (no worker needed)."""

from __future__ import annotations

import redis

from core.connections import RedisConfig
from core.memory import (
    RESULT_BYTES_FALLBACK,
    read_memory,
    result_bytes,
)
from producer.queues import snapshot
from services.exporter import QueueCollector
from tests.support.redis_memory import (
    MAXMEMORY,
    r_fixture,  # noqa: F401  (the fixture `r`)
    server_fixture,  # noqa: F401  (the fixture `server`)
    store_results,
)


def test_snapshot_reads_info_memory(r: redis.Redis) -> None:
    snap = snapshot(r, RedisConfig())
    assert snap.memory is not None
    assert snap.memory.maxmemory == MAXMEMORY and snap.memory.maxmemory_policy == "noeviction"
    assert 0 < snap.memory.used_memory < MAXMEMORY
    assert snap.to_dict()["memory"] == snap.memory.to_dict()


def test_result_size_is_measured_on_results_or_assumed(r: redis.Redis) -> None:
    assert result_bytes(r, RedisConfig()) == (RESULT_BYTES_FALLBACK, 0)  # none stored
    r.set("celery", b"not a result")
    store_results(r, 50)
    size, measured = result_bytes(r, RedisConfig())
    assert 1 <= measured <= 20
    one = int(r.memory_usage(next(r.scan_iter("celery-task-meta-*"))) or 0)
    assert abs(size - one) < 64 and 600 < size < 2000
    # Another tenant's results are not this one's.
    assert result_bytes(r, RedisConfig(key_prefix="t1:")) == (RESULT_BYTES_FALLBACK, 0)


def test_exporter_exports_redis_memory(r: redis.Redis) -> None:
    samples = {
        s.name: s.value
        for family in QueueCollector(r, RedisConfig(), ["celery"], 15.0).collect()
        for s in family.samples
    }
    assert samples["imgqueue_redis_max_memory_bytes"] == MAXMEMORY
    info = read_memory(r)
    assert info is not None
    assert abs(samples["imgqueue_redis_used_memory_bytes"] - info.used_memory) < 1 << 20
