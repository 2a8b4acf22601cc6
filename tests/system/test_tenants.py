"""Tenants on a real worker: a job submitted with a tenant carries it in its stored result and
its completion event, and stops counting against the tenant's quota once it ends, whether it
succeeded, was a bulk message's image, carried an upload, or was cancelled before it started.

One worker (stand-in model) for the module, started after the cancelled jobs were submitted:
a cancel waits in Redis for its message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from core.connections import RedisConfig
from core.contract import result_key
from core.lifecycle import EVENTS_STREAM, upload_key
from core.tenants import Tenant, jobs_key
from producer import Client
from producer.events import Event
from tests.support.paths import SAMPLES
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory

ACME = Tenant("acme", max_queued=50)


@dataclass
class Early:
    """Jobs of ACME submitted and cancelled while no worker ran."""

    cancelled: list[str]
    others: list[str]


@pytest.fixture(scope="module")
def early(workers: WorkerFactory, redis_url: str) -> Early:
    with Client(redis_url) as c:
        single = c.submit("cat.jpg", top_k=1, tenant=ACME)
        bulk = c.submit_many(["cat.jpg", "coffee.jpg", "cat.jpg"], top_k=1, tenant=ACME)
        result = c.cancel([single, bulk[1]])
    assert result.cancelled == [single, bulk[1]]
    workers.start(MODEL="sleep:5ms")
    return Early(cancelled=[single, bulk[1]], others=[bulk[0], bulk[2]])


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def events_of(r: redis.Redis, ids: list[str]) -> dict[str, Event]:
    """The job events of these ids, once every one has its event."""

    def found() -> dict[str, Event]:
        raw: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(EVENTS_STREAM)  # type: ignore[assignment]
        parsed = [Event.parse(entry_id, fields) for entry_id, fields in raw]
        out = {e.id: e for e in parsed if e.kind == "job" and e.id in ids}
        return out if len(out) == len(ids) else {}

    events: dict[str, Event] = wait_for(found, 30, f"the events of {len(ids)} job(s)")
    return events


def jobs(r: redis.Redis) -> set[bytes]:
    """ACME's jobs that count against its quota."""
    return set(r.zrange(jobs_key(RedisConfig(), "acme"), 0, -1))  # type: ignore[arg-type]


def test_a_tenants_job_carries_its_tenant_and_stops_counting_once_it_ends(
    early: Early, redis_url: str, r: redis.Redis
) -> None:
    with Client(redis_url) as c:
        task_id = c.submit("cat.jpg", top_k=1, tenant=ACME)
        result = c.result(task_id, timeout=60)
        assert result["tenant"] == "acme" and result["source"] == "cat.jpg"
        assert c.status(task_id).meta["tenant"] == "acme"
        plain = c.submit("cat.jpg", top_k=1)
        assert "tenant" not in c.result(plain, timeout=60)
        assert "tenant" not in c.status(plain).meta
    events = events_of(r, [task_id, plain])
    assert (events[task_id].tenant, events[task_id].state) == ("acme", "SUCCESS")
    assert events[plain].tenant == ""
    wait_for(lambda: task_id.encode() not in jobs(r), 10, "the job to stop counting")


def test_a_bulk_submit_and_an_upload_stop_counting_once_they_end(
    early: Early, redis_url: str, r: redis.Redis
) -> None:
    data = (SAMPLES / "cat.jpg").read_bytes()
    with Client(redis_url) as c:
        ids = c.submit_many(["cat.jpg", "coffee.jpg", data, "cat.jpg", "missing.jpg"], tenant=ACME)
        assert r.exists(upload_key(ids[2]))
        outcomes = {o.task_id: o for o in c.wait(ids, timeout=60)}
    assert [outcomes[i].state for i in ids[:2] + ids[3:]] == ["SUCCESS"] * 3 + ["FAILURE"]
    for task_id in ids:
        stored = json.loads(r.get(result_key(task_id)) or b"{}")
        assert stored["tenant"] == "acme", stored
    events = events_of(r, list(ids))
    assert {e.tenant for e in events.values()} == {"acme"}
    wait_for(lambda: not jobs(r) & {i.encode() for i in ids}, 10, "the jobs to stop counting")
    assert not r.exists(upload_key(ids[2]))  # its bytes went with it


def test_cancelled_jobs_stop_counting_once_a_worker_ends_them(
    early: Early, redis_url: str, r: redis.Redis
) -> None:
    with Client(redis_url) as c:
        outcomes = {o.task_id: o for o in c.wait(early.cancelled + early.others, timeout=60)}
    assert [outcomes[i].error_type for i in early.cancelled] == ["Cancelled", "Cancelled"]
    assert [outcomes[i].state for i in early.others] == ["SUCCESS", "SUCCESS"]
    events = events_of(r, early.cancelled)
    assert [events[i].tenant for i in early.cancelled] == ["acme", "acme"]
    assert [events[i].state for i in early.cancelled] == ["REVOKED", "REVOKED"]
    every = {i.encode() for i in early.cancelled + early.others}
    wait_for(lambda: not jobs(r) & every, 10, "the cancelled jobs to stop counting")
