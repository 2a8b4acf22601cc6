"""`imgqueue status` and the exporter show Redis' memory, and status how many hours of results
it has room for: against a private redis-server with a maxmemory (no worker needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core.connections import RedisConfig
from core.memory import (
    RESULT_BYTES_FALLBACK,
    MemoryInfo,
    hours_left,
    read_memory,
    result_bytes,
)
from producer.queues import snapshot
from producer.status import render_memory
from services.exporter import QueueCollector
from tests.support.paths import ROOT
from tests.support.redis_server import RedisServer

MAXMEMORY = 64 << 20
# What a worker stores for a top-5 `classify` result (the shape, not real numbers).
RESULT: dict[str, Any] = {
    "status": "SUCCESS",
    "result": {
        "source": "https://images.example.com/photos/2026/cat-on-a-mat.jpg",
        "model": "resnet50",
        "weights": "IMAGENET1K_V2",
        "device": "cuda:0",
        "precision": "fp16",
        "pretrained": True,
        "cached": False,
        "predictions": [
            {"label": f"label number {i}", "index": 100 + i, "probability": 0.123456789}
            for i in range(5)
        ],
        "timings_ms": {"fetch": 3.1, "preprocess": 12.4, "inference": 61.0, "total": 76.6},
    },
    "traceback": None,
    "children": [],
    "date_done": "2026-11-27T21:02:11.812345+00:00",
    "task_id": "9b1d0000-0000-0000-0000-000000000000",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(
        tmp_path_factory.mktemp("memory"),
        extra=["--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"],
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def r(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def store_results(r: redis.Redis, n: int) -> None:
    for _ in range(n):
        task_id = str(uuid.uuid4())
        r.set(f"celery-task-meta-{task_id}", json.dumps({**RESULT, "task_id": task_id}))


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


def test_hours_left_is_the_room_over_the_growth() -> None:
    half = MemoryInfo(1 << 30, 2 << 30, "noeviction")
    assert hours_left(half, 3600.0, 1300) == pytest.approx((1 << 30) / (3600 * 1300))
    assert hours_left(MemoryInfo(3 << 30, 2 << 30, "noeviction"), 3600.0, 1300) == 0
    assert hours_left(MemoryInfo(1 << 30, 0, "noeviction"), 3600.0, 1300) is None  # no limit
    assert hours_left(half, 0.0, 1300) is None  # nothing being written
    text = render_memory(
        {
            **half.to_dict(),
            "result_bytes": 1300,
            "result_bytes_measured": 20,
            "results_per_hour": 3600 * 50,
            "hours_left": hours_left(half, 3600 * 50, 1300),
        }
    )
    assert text == (
        "redis memory: 1.00 GiB used of maxmemory 2.00 GiB (50%, noeviction)\n"
        "  room for about 4.6 hours of results at 50.0/s, 1.27 KiB each (mean of 20 measured; "
        "expiry not counted)"
    )
    assert render_memory(MemoryInfo(5 << 20, 0, "noeviction").to_dict()) == (
        "redis memory: 5.00 MiB used, no maxmemory (noeviction)"
    )
    assert "unknown" in render_memory(None)


def test_status_shows_memory(server: RedisServer, r: redis.Redis) -> None:
    store_results(r, 30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": server.url()}
    run = [sys.executable, "-m", "producer", "status", "--timeout", "0.2"]
    out = subprocess.run(
        [*run, "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    mem = json.loads(out.stdout)["memory"]
    assert mem["maxmemory"] == MAXMEMORY and mem["maxmemory_policy"] == "noeviction"
    assert 0 < mem["used_memory"] < MAXMEMORY
    assert mem["result_bytes_measured"] >= 1 and 600 < mem["result_bytes"] < 2000
    assert mem["results_per_hour"] == 0 and mem["hours_left"] is None  # no worker answered
    human = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "redis memory: " in human.stdout and "of maxmemory 64.00 MiB" in human.stdout
    assert "no estimate of the room left" in human.stdout


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
