"""Completion events without a worker: every final state stored is one entry on the events
stream (the result backend in-process), a bulk store is announced per image, and EVENTS_MAXLEN
bounds the stream (tests/system/test_events.py follows a real worker's events)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context

from core.contract import TASK_NAME
from core.lifecycle import EVENT_FIELDS, EVENTS_STREAM
from tests.support.redis_server import RedisServer
from worker.backend import ResultBackend

# -- the backend alone (no worker process) -----------------------------------------------------


DB = 8


def make_backend(url: str, maxlen: int | None = None) -> ResultBackend:
    app = Celery("events-test", backend=f"worker.backend:ResultBackend+{url}")
    app.conf.result_expires = 600
    if maxlen is not None:
        app.settings = SimpleNamespace(events_maxlen=maxlen)  # as a worker's Settings
    backend = app.backend
    assert isinstance(backend, ResultBackend)
    return backend


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.scratch(DB, decode_responses=True) as client:
        yield client


def entries(r: redis.Redis, task_id: str | None = None) -> list[dict[str, str]]:
    raw: Any = r.xrange(EVENTS_STREAM)
    out: list[dict[str, str]] = [fields for _, fields in raw]
    return [e for e in out if task_id is None or e["id"] == task_id]


def request(task_id: str, queue: str = "celery", **headers: Any) -> Context:
    """What Celery hands the backend for a message: its delivery info and headers."""
    return Context(
        {"id": task_id, "task": TASK_NAME, "delivery_info": {"routing_key": queue}, **headers}
    )


def test_each_final_state_reached_is_one_event(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    backend = make_backend(redis_server.url(DB))
    backend.store_result("e-1", {"pid": 1}, states.STARTED)  # not final: no event
    backend.store_result("e-1", {"predictions": []}, states.SUCCESS, request=request("e-1"))
    backend.store_result("e-1", {"predictions": [2]}, states.SUCCESS)  # a duplicate's: kept
    backend.mark_as_failure("e-1", ValueError("late"))  # a late FAILURE never replaces it
    assert [(e["state"], e["queue"]) for e in entries(store, "e-1")] == [("SUCCESS", "celery")]
    # A FAILURE is announced, and again as SUCCESS when a copy that got through replaces it.
    backend.mark_as_failure("e-2", ValueError("transient"), request=request("e-2", "gpu"))
    backend.mark_as_failure("e-2", ValueError("again"))
    backend.store_result("e-2", {"predictions": []}, states.SUCCESS)
    assert [(e["state"], e["error"]) for e in entries(store, "e-2")] == [
        ("FAILURE", "ValueError"),
        ("SUCCESS", ""),
    ]
    # Celery's own revoke path (celery control revoke, expires=) is a final state too.
    backend.mark_as_revoked("e-3", "revoked", request=request("e-3", imgqueue_webhook="https://x"))
    (revoked,) = entries(store, "e-3")
    assert revoked["state"] == "REVOKED" and revoked["error"] == "TaskRevokedError"
    assert revoked["webhook"] == "https://x" and revoked["kind"] == "job"
    assert set(revoked) == set(EVENT_FIELDS)
    assert float(revoked["time"]) > 1.7e9


def test_a_bulk_store_is_announced_per_image_not_per_message(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    backend = make_backend(redis_server.url(DB))
    bulk = Context(
        {
            "id": "bulk-1",
            "task": "classify_many",
            "delivery_info": {"routing_key": "model.defects"},
            "imgqueue_webhook": "https://hooks.example/all",
            "args": [[{"id": "i-1", "source": "a"}, {"id": "i-2", "source": "b", "webhook": "w"}]],
        }
    )
    backend.store_many(
        [("i-1", {"predictions": []}, states.SUCCESS), ("i-2", KeyError("x"), states.FAILURE)],
        request=bulk,
    )
    backend.store_result("bulk-1", {"succeeded": 1}, states.SUCCESS, request=bulk)
    got = {e["id"]: e for e in entries(store)}
    assert set(got) == {"i-1", "i-2"}  # the message's own summary is no job of anyone's
    assert got["i-1"]["queue"] == got["i-2"]["queue"] == "model.defects"
    assert got["i-1"]["webhook"] == "https://hooks.example/all"  # the message's header
    assert got["i-2"]["webhook"] == "w"  # the entry's own field wins
    assert got["i-2"]["error"] == "KeyError"


def test_events_maxlen_bounds_the_stream_and_zero_turns_it_off(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    off = make_backend(redis_server.url(DB), maxlen=0)
    off.store_many([(f"o-{i}", {"p": i}, states.SUCCESS) for i in range(10)])
    assert store.exists(EVENTS_STREAM) == 0
    capped = make_backend(redis_server.url(DB), maxlen=50)
    for start in range(0, 1000, 100):
        capped.store_many([(f"c-{i}", {"p": i}, states.SUCCESS) for i in range(start, start + 100)])
    # MAXLEN ~ trims whole stream nodes (100 entries each): about 50, never all 1000.
    assert 50 <= store.xlen(EVENTS_STREAM) <= 200


# -- blocking reads and socket timeouts ----------------------------------------------------------


def test_a_blocking_read_never_outlasts_the_clients_socket_timeout(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    from core.connections import SOCKET_TIMEOUT, RedisConfig, block_budget, socket_timeout
    from producer.events import follow

    # Our clients set their own timeout instead of taking redis-py's default (5 s since 8.0).
    ours = RedisConfig(redis_server.url(DB)).client()
    assert socket_timeout(ours) == SOCKET_TIMEOUT
    assert block_budget(ours, 5.0) == 5.0
    ours.close()
    # An app's own client with a short timeout: each XREAD blocks for less than it, so a quiet
    # stream ends the follow at its own timeout, not with "Timeout reading from ...".
    short = redis.Redis.from_url(redis_server.url(DB), socket_timeout=1.5)
    assert block_budget(short, 5.0) < 1.5
    assert list(follow(short, timeout=3.5)) == []
    short.close()
