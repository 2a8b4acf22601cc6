"""The result backend: one atomic round trip per state, and a SUCCESS is never overwritten."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context

from core.contract import BULK_TASK_NAME
from core.lifecycle import EVENTS_STREAM
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
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


def test_a_bulk_is_stored_in_one_call_keeping_final_states(backend: ResultBackend) -> None:
    backend.store_result("b-1", {"predictions": [1]}, states.SUCCESS)
    backend.mark_as_failure("b-2", ValueError("corrupt"))
    backend.store_result("b-3", {"pid": 1}, states.STARTED)
    backend.store_many(
        [
            ("b-1", {"predictions": [9]}, states.SUCCESS),  # SUCCESS stays
            ("b-2", ValueError("again"), states.FAILURE),  # FAILURE stays
            ("b-3", {"predictions": [3]}, states.SUCCESS),  # STARTED is replaced
            ("b-4", ValueError("bad"), states.FAILURE),
        ]
    )
    assert _stored(backend, "b-1")["result"] == {"predictions": [1]}
    assert "corrupt" in str(_stored(backend, "b-2")["result"])
    assert _stored(backend, "b-3")["result"] == {"predictions": [3]}
    assert _stored(backend, "b-4")["status"] == "FAILURE"
    # A final state put back keeps an expiry.
    assert 0 < backend.client.ttl(backend.get_key_for_task("b-1")) <= 600


def test_only_channels_with_subscribers_are_published(backend: ResultBackend) -> None:
    key = backend.get_key_for_task("p-1")
    pubsub = backend.client.pubsub()
    pubsub.subscribe(key)
    wait_for(lambda: pubsub.get_message(timeout=0.1) is not None, 5, "subscription")
    backend.client.config_resetstat()
    backend.store_many([(f"p-{i}", {"predictions": []}, states.SUCCESS) for i in range(1, 11)])
    assert backend.client.info("commandstats")["cmdstat_publish"]["calls"] == 1
    message = wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "the published state")
    assert json.loads(message["data"])["task_id"] == "p-1"
    pubsub.close()


def test_started_is_written_only_where_nothing_is_stored(backend: ResultBackend) -> None:
    started = backend.started("s-1", "w1@host")
    assert json.loads(started.value)["status"] == "STARTED"
    assert backend.client.set(started.key, started.value, nx=True, ex=started.ttl)
    backend.store_result("s-1", {"predictions": []}, states.SUCCESS)
    backend.store_result("s-1", {"pid": 2}, states.STARTED)  # a late duplicate's start
    assert _stored(backend, "s-1")["status"] == "SUCCESS"


def test_a_final_state_read_whatever_its_json_layout(backend: ResultBackend) -> None:
    """The store reads a STARTED by its opening bytes; any other layout is decoded in full,
    so a SUCCESS another writer stored with its keys in another order is still kept."""
    backend.client.set(
        backend.get_key_for_task("j-1"), json.dumps({"result": {"p": 1}, "status": "SUCCESS"})
    )
    backend.store_result("j-1", {"p": 2}, states.SUCCESS)
    assert _stored(backend, "j-1")["result"] == {"p": 1}


def test_a_bulk_message_stores_its_own_result_with_its_images(backend: ResultBackend) -> None:
    """One call for the images and the message's summary; the summary has no event, and
    Celery's own store of it afterwards stores nothing (the request's ignore_result)."""
    items = [{"id": "m-1a", "source": "x"}]
    request = Context({"id": "m-1", "task": BULK_TASK_NAME, "args": [items]})
    backend.client.config_resetstat()
    backend.store_many([("m-1a", {"p": 1}, states.SUCCESS)], request, summary={"succeeded": 1})
    backend.mark_as_done("m-1", {"succeeded": 2}, request=request)
    assert _stored(backend, "m-1")["result"] == {"succeeded": 1}
    assert backend.client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
    ids = [fields[b"id"] for _, fields in backend.client.xrange(EVENTS_STREAM)]
    assert b"m-1a" in ids and b"m-1" not in ids
