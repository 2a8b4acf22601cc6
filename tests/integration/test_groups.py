"""Job groups without a worker: exact counters (a job counts once, even when stored twice),
exactly one completion event, a job of no known group, and the shipped producer user's rights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context

from core.contract import TASK_NAME, result_key
from core.lifecycle import EVENTS_STREAM, GROUP_HEADER
from producer import Client
from producer.groups import create, keys
from tests.support.redis_server import RedisServer, with_shipped_users
from worker.backend import ResultBackend

DB = 9


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.scratch(DB, decode_responses=True) as client:
        yield client


def member(task_id: str, group: str) -> Context:
    return Context(
        {
            "id": task_id,
            "task": TASK_NAME,
            "delivery_info": {"routing_key": "celery"},
            GROUP_HEADER: group,
        }
    )


def group_events(r: redis.Redis, group: str) -> list[dict[str, Any]]:
    raw: Any = r.xrange(EVENTS_STREAM)
    return [f for _, f in raw if f.get("group") == group or f.get("id") == group]


def test_counters_count_each_job_once_and_the_last_one_completes_the_group(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    app = Celery("groups-test", backend=f"worker.backend:ResultBackend+{redis_server.url(DB)}")
    app.conf.result_expires = 600
    backend: ResultBackend = app.backend
    ids = [f"j-{i}" for i in range(5)]
    create(store, "g", ids, queue="celery", webhook="https://hooks.example/g")
    meta, done, listed = keys("g")
    assert store.ttl(meta) > 86400  # waiting for its jobs: a week
    backend.store_result("j-0", {"p": 0}, states.SUCCESS, request=member("j-0", "g"))
    backend.store_result("j-0", {"p": 0}, states.SUCCESS, request=member("j-0", "g"))  # again
    backend.mark_as_failure("j-1", ValueError("x"), request=member("j-1", "g"))
    backend.mark_as_failure("j-1", ValueError("y"), request=member("j-1", "g"))  # again
    backend.mark_as_revoked("j-2", "cancelled", request=member("j-2", "g"))
    counters = store.hgetall(meta)
    assert (counters["succeeded"], counters["failed"], counters["cancelled"]) == ("1", "1", "1")
    assert counters["finished"] == "3" and "completed" not in counters
    # A FAILURE replaced by a SUCCESS (a copy that got through) moves the job between counters.
    backend.store_result("j-1", {"p": 1}, states.SUCCESS, request=member("j-1", "g"))
    assert store.hmget(meta, "succeeded", "failed", "finished") == ["2", "0", "3"]
    # The last two end in one bulk store: the group completes, once.
    bulk = Context(
        {
            "id": "b",
            "task": "classify_many",
            "delivery_info": {"routing_key": "celery"},
            GROUP_HEADER: "g",
            "args": [[{"id": "j-3", "source": "a"}, {"id": "j-4", "source": "b"}]],
        }
    )
    entries = [("j-3", {"p": 3}, states.SUCCESS), ("j-4", KeyError("k"), states.FAILURE)]
    backend.store_many(entries, request=bulk)
    backend.store_many(entries, request=bulk)  # a redelivered bulk storing them again
    counters = store.hgetall(meta)
    assert [counters[k] for k in ("succeeded", "failed", "cancelled", "finished")] == [
        "3",
        "1",
        "1",
        "5",
    ]
    assert store.hgetall(done) == {
        "j-0": "SUCCESS",
        "j-1": "SUCCESS",
        "j-2": "REVOKED",
        "j-3": "SUCCESS",
        "j-4": "FAILURE",
    }
    events = group_events(store, "g")
    finals = [e for e in events if e["kind"] == "group"]
    assert len(finals) == 1
    assert finals[0] == {
        **finals[0],
        "id": "g",
        "state": "DONE",
        "queue": "celery",
        "webhook": "https://hooks.example/g",
        "total": "5",
        "succeeded": "3",
        "failed": "1",
        "cancelled": "1",
    }
    assert events[-1]["kind"] == "group"  # after its last job's event
    # One event per state each job reached: j-1 twice (FAILURE, then SUCCESS).
    assert sorted(e["id"] for e in events if e["kind"] == "job") == sorted([*ids, "j-1"])
    # Done: the group lives as long as its results from now on.
    assert 0 < store.ttl(meta) <= 600 and 0 < store.ttl(listed) <= 600
    # A late store after completion changes nothing and announces nothing more.
    backend.store_result("j-4", {"p": 4}, states.SUCCESS, request=member("j-4", "g"))
    assert store.hget(meta, "succeeded") == "4" and store.hget(meta, "failed") == "0"
    assert len([e for e in group_events(store, "g") if e["kind"] == "group"]) == 1


def test_a_job_of_no_known_group_is_just_announced(
    redis_server: RedisServer, store: redis.Redis
) -> None:
    app = Celery("groups-test", backend=f"worker.backend:ResultBackend+{redis_server.url(DB)}")
    backend: ResultBackend = app.backend
    backend.store_result("x-1", {"p": 1}, states.SUCCESS, request=member("x-1", "gone"))
    assert not store.exists(*keys("gone"))  # no group is made up
    assert [e["id"] for e in group_events(store, "gone")] == ["x-1"]


def test_the_shipped_producer_user_may_make_groups_and_read_events(tmp_path: Path) -> None:
    """deploy/redis.conf's users: the producer writes and reads its groups (a selector on
    imgqueue:group:*) and reads the events stream, and still cannot write a result or an
    event."""
    server = with_shipped_users(tmp_path)
    worker = redis.Redis(port=server.port, username="worker", password="imgqueue-worker-dev")
    try:
        url = f"redis://producer:imgqueue-producer-dev@127.0.0.1:{server.port}/0"
        with Client(url) as producer:
            ids = producer.submit_many(["a.jpg", "b.jpg"], group=True)
            assert producer.group(ids.group_id).queued == 2
            assert producer.group_ids(ids.group_id) == list(ids)
            worker.xadd(EVENTS_STREAM, {"kind": "job", "id": ids[0], "state": "SUCCESS"})
            assert [e.id for e in producer.events("0", timeout=0.1)] == [ids[0]]
            r: redis.Redis = producer.results
            for attempt in (
                lambda: r.set(result_key(ids[0]), "{}"),
                lambda: r.xadd(EVENTS_STREAM, {"kind": "job"}),
                lambda: r.delete(EVENTS_STREAM),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()
    finally:
        worker.close()
        server.stop()
