"""The result backend: one atomic round trip per state, and a SUCCESS is never overwritten."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, states

from tests.support import RedisServer, wait_for
from worker.backend import ResultBackend

DB = 7


@pytest.fixture
def backend(redis_server: RedisServer) -> Iterator[ResultBackend]:
    url = redis_server.url(DB)
    app = Celery("backend-test", backend=f"worker.backend:ResultBackend+{url}")
    app.conf.result_expires = 600
    backend = app.backend
    assert isinstance(backend, ResultBackend)
    yield backend
    redis.Redis.from_url(url).flushdb()
    app.close()


def _stored(backend: ResultBackend, task_id: str) -> dict[str, object]:
    raw = backend.client.get(backend.get_key_for_task(task_id))
    assert raw is not None
    meta: dict[str, object] = json.loads(raw)
    return meta


def test_states_are_stored_as_plain_json_with_an_expiry(backend: ResultBackend) -> None:
    backend.store_result("t-1", {"pid": 1}, states.STARTED)
    assert _stored(backend, "t-1")["status"] == "STARTED"
    backend.store_result("t-1", {"predictions": []}, states.SUCCESS)
    meta = _stored(backend, "t-1")
    assert meta["status"] == "SUCCESS" and meta["result"] == {"predictions": []}
    assert meta["task_id"] == "t-1"
    assert 0 < backend.client.ttl(backend.get_key_for_task("t-1")) <= 600
    assert backend.get_task_meta("t-1")["status"] == "SUCCESS"


def test_a_late_duplicate_never_overwrites_success(backend: ResultBackend) -> None:
    backend.store_result("t-2", {"predictions": [1]}, states.SUCCESS)
    # A redelivered copy of the same job starting, failing or succeeding again afterwards.
    backend.store_result("t-2", {"pid": 2}, states.STARTED)
    backend.mark_as_failure("t-2", ValueError("late duplicate"))
    backend.store_result("t-2", {"predictions": [2]}, states.SUCCESS)
    meta = _stored(backend, "t-2")
    assert meta["status"] == "SUCCESS" and meta["result"] == {"predictions": [1]}


def test_a_failure_can_still_be_replaced_by_a_later_success(backend: ResultBackend) -> None:
    backend.mark_as_failure("t-3", ValueError("transient"))
    backend.store_result("t-3", {"predictions": [3]}, states.SUCCESS)
    assert _stored(backend, "t-3")["status"] == "SUCCESS"


def test_each_state_is_published_for_pubsub_waiters(backend: ResultBackend) -> None:
    key = backend.get_key_for_task("t-4")
    pubsub = backend.client.pubsub()
    pubsub.subscribe(key)
    wait_for(lambda: pubsub.get_message(timeout=0.1) is not None, 5, "subscription")
    backend.store_result("t-4", {"predictions": []}, states.SUCCESS)
    received: list[dict[str, object]] = []

    def got_one() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            received.append(json.loads(message["data"]))
        return bool(received)

    wait_for(got_one, 5, "the published state")
    assert received[0]["status"] == "SUCCESS"
    pubsub.close()


def test_a_failure_is_never_overwritten_by_a_late_started_or_retry(
    backend: ResultBackend,
) -> None:
    backend.mark_as_failure("t-5", ValueError("the image is corrupt"))
    # A redelivered duplicate starting, or retrying, after the job has already failed.
    backend.store_result("t-5", {"pid": 3}, states.STARTED)
    backend.mark_as_retry("t-5", ValueError("transient"))
    meta = _stored(backend, "t-5")
    assert meta["status"] == "FAILURE"
    assert "corrupt" in str(meta["result"])


def test_result_failure_expires_is_honoured(redis_server: RedisServer) -> None:
    url = redis_server.url(DB)
    app = Celery("backend-test", backend=f"worker.backend:ResultBackend+{url}")
    app.conf.update(result_expires=600, result_failure_expires=60)
    backend = app.backend
    try:
        backend.mark_as_failure("t-6", ValueError("bad"))
        backend.store_result("t-7", {"predictions": []}, states.SUCCESS)
        assert 0 < backend.client.ttl(backend.get_key_for_task("t-6")) <= 60
        assert 60 < backend.client.ttl(backend.get_key_for_task("t-7")) <= 600
    finally:
        redis.Redis.from_url(url).flushdb()
        app.close()
