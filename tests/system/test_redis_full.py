"""A full Redis is weather: the worker pauses, says so, and resumes by itself when memory returns.

A private redis-server with `noeviction` (as deploy/redis.conf ships it) is made full under load
by lowering `maxmemory` below what it holds, then given memory again. Default worker settings,
the real `celery worker`; only the model is the stand-in, so the load lasts long enough.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.contract import result_key
from producer import Client
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", extra=["--maxmemory-policy", "noeviction"]).start()
    yield server
    server.stop()


def _ready(port: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _metric(port: str, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def _results(raw: redis.Redis, ids: list[str]) -> list[dict[str, Any] | None]:
    """Each job's stored result, parsed (None: none stored yet)."""
    return [None if v is None else json.loads(v) for v in raw.mget([result_key(t) for t in ids])]


def _states(raw: redis.Redis, ids: list[str]) -> dict[str, int]:
    """How many jobs are in each state (PENDING: no result stored yet)."""
    return dict(Counter("PENDING" if r is None else r["status"] for r in _results(raw, ids)))


def test_a_full_redis_pauses_the_worker_and_every_job_still_succeeds(
    full_redis: RedisServer, worker_env: dict[str, str], tmp_path: Path
) -> None:
    raw = redis.Redis.from_url(full_redis.url(0))
    port = str(free_port())
    env = {**worker_env, "REDIS_URL": full_redis.url(0), "MODEL": "sleep:20ms"}
    factory = WorkerFactory(env, tmp_path)
    worker = factory.start(METRICS_PORT=port, METRICS_ADDR="127.0.0.1")
    try:
        with Client(full_redis.url(0)) as client:
            names = ["cat.jpg", "coffee.jpg", "rocket.jpg"]
            ids = client.submit_many(names * 100, bulk_size=1)  # 300 single messages
            ids += client.submit_many(names * 200, bulk_size=16)  # and 600 images in bulks
            wait_for(lambda: _states(raw, ids).get("SUCCESS", 0) >= 20, 120, "some results")
            # Full: below what Redis holds, so every write that takes memory is refused.
            used = int(raw.info("memory")["used_memory"])
            raw.config_set("maxmemory", max(used - 1024 * 1024, 1024 * 1024))
            wait_for(lambda: _ready(port) == 503, 60, "the worker to report not ready")
            wait_for(lambda: _metric(port, "imgqueue_redis_full") >= 1, 30, "the full metric")
            stalled = _states(raw, ids)
            assert stalled.get("PENDING", 0) > 0, stalled
            assert worker.alive()
            # Memory returns: the worker resumes by itself.
            raw.config_set("maxmemory", 0)
            try:
                wait_for(
                    lambda: _states(raw, ids).get("SUCCESS", 0) == len(ids),
                    240,
                    "every job to succeed",
                    interval=0.5,
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}: {_states(raw, ids)}\n{worker.log()[-6000:]}") from exc
            wait_for(lambda: _ready(port) == 200, 60, "the worker to be ready again")
            assert _metric(port, "imgqueue_redis_full") == 0
        assert worker.alive()
        log = worker.log()
        assert "Unrecoverable error" not in log
        # Every result whole and a success: none failed with Redis' OutOfMemoryError (or any
        # other), none stored half.
        results = _results(raw, ids)
        failed = [r["result"] for r in results if r is not None and r["status"] != "SUCCESS"]
        assert not failed, failed[:5]
        for task_id, result in zip(ids, results, strict=True):
            assert result is not None and result["task_id"] == task_id
            assert result["result"]["source"] in names and result["result"]["predictions"]
    finally:
        factory.stop_all()
        raw.close()
