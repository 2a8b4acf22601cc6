"""Client.wait against a real Redis, results written by hand: what it finds, and what it costs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from core.contract import result_key
from producer import Client
from tests.support.redis_server import RedisServer

DB = 9


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.scratch(DB) as client:
        yield client


def _finish(r: redis.Redis, task_id: str) -> None:
    r.set(result_key(task_id), json.dumps({"status": "SUCCESS", "result": {"id": task_id}}))


def test_a_job_far_behind_the_window_is_found(r: redis.Redis, redis_server: RedisServer) -> None:
    ids = [f"w-{i}" for i in range(2000)]
    _finish(r, ids[-1])  # the newest finishes first, far past the oldest 128
    with Client(redis_server.url(DB)) as client:
        outcomes = client.wait(ids, timeout=30)
        first = next(outcomes)
        assert first.task_id == ids[-1] and first.ok
        r.mset({result_key(t): json.dumps({"status": "SUCCESS", "result": {}}) for t in ids})
        assert len({o.task_id for o in outcomes}) == 1999


def test_each_poll_reads_a_bounded_number_of_keys(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    ids = [f"b-{i}" for i in range(5000)]

    def finish_slowly() -> None:
        for start in range(0, len(ids), 250):
            time.sleep(0.02)
            for task_id in ids[start : start + 250]:
                _finish(r, task_id)

    r.config_resetstat()
    writer = threading.Thread(target=finish_slowly)
    writer.start()
    with Client(redis_server.url(DB)) as client:
        assert len(list(client.wait(ids, timeout=60))) == len(ids)
    writer.join()
    mget = r.info("commandstats")["cmdstat_mget"]
    # At most 256 keys a poll: reading all 5,000 pending every poll would be ~50x more.
    keys_read = int(r.info("stats")["keyspace_hits"]) + int(r.info("stats")["keyspace_misses"])
    assert keys_read <= 256 * mget["calls"]
    assert keys_read < 20 * len(ids), keys_read


def test_a_few_jobs_are_seen_as_soon_as_they_are_stored(redis_server: RedisServer) -> None:
    from celery import Celery, states

    url = redis_server.url(DB)
    app = Celery("wait-test", backend=f"worker.backend:ResultBackend+{url}")
    stored_at: list[float] = []

    def store_later() -> None:
        time.sleep(0.32)  # polls alone would look at ~0.31 s, then not before ~0.63 s
        app.backend.store_result("lone-1", {"predictions": []}, states.SUCCESS)
        stored_at.append(time.monotonic())

    try:
        with Client(url) as client:
            writer = threading.Thread(target=store_later)
            writer.start()
            outcome = client.result("lone-1", timeout=10)
            seen_at = time.monotonic()
            writer.join()
        assert outcome == {"predictions": []}
        assert seen_at - stored_at[0] < 0.15, seen_at - stored_at[0]
    finally:
        redis.Redis.from_url(url).flushdb()
        app.close()
