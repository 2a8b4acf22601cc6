"""Job groups: `submit_many(..., group=True)` and `imgqueue submit --group`, exact counters
(a job counts once, even when run twice or its worker is SIGKILLed), progress and ETA, exactly
one completion event, and the results export."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context

from producer import Client
from producer.contract import TASK_NAME, result_key
from producer.groups import GroupIds, UnknownGroup, create, keys
from producer.jobs import EVENTS_STREAM, GROUP_HEADER
from tests.support import (
    ROOT,
    RedisServer,
    WorkerFactory,
    WorkerProcess,
    held_messages,
    imgqueue,
    queued_messages,
    wait_for,
)
from worker.backend import ResultBackend

# -- the counters, on the backend alone (no worker process) --------------------------------------

DB = 9


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(DB), decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


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
    shipped = (ROOT / "deploy" / "redis.conf").read_text().splitlines()
    users = tmp_path / "users.conf"
    users.write_text("\n".join(line for line in shipped if line.startswith("user ")) + "\n")
    server = RedisServer(tmp_path / "acl", config=users).start()
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


# -- real workers ------------------------------------------------------------------------------

DEAD_AFTER = 3


@pytest.fixture(scope="module")
def pair(workers: WorkerFactory) -> Iterator[list[WorkerProcess]]:
    """Two workers sharing the queue; a killed one's messages return after DEAD_AFTER s."""
    started = [
        workers.start(
            wait=False, MODEL=model, DEAD_WORKER_TIMEOUT=str(DEAD_AFTER), MAX_BATCH_SIZE="8"
        )
        for model in ("sleep:20ms", "sleep:300ms")
    ]
    yield [w.wait_ready() for w in started]


def test_a_group_counts_its_jobs_and_ends_with_one_event(
    pair: list[WorkerProcess], client: Client
) -> None:
    since = client.results.xrevrange(EVENTS_STREAM, count=1)
    sources = ["cat.jpg"] * 40 + ["missing.jpg"] * 5 + ["truncated.jpg"]
    ids = client.submit_many(sources, top_k=1, bulk_size=8, group=True)
    assert isinstance(ids, GroupIds) and len(ids) == len(sources)
    gid = ids.group_id
    first = client.group(gid)
    assert first.total == len(sources) and first.created <= time.time()
    assert client.group_ids(gid) == list(ids)
    # Counts add up at every look, and finished jobs only grow.
    seen = 0
    while True:
        now = client.group(gid)
        assert now.queued + now.running + now.finished == now.total
        assert now.finished >= seen
        seen = now.finished
        if now.done:
            break
        time.sleep(0.02)
    assert (now.succeeded, now.failed, now.cancelled, now.queued, now.running) == (40, 6, 0, 0, 0)
    assert now.progress == 1.0 and now.eta == 0.0 and now.completed is not None
    assert now.to_dict()["finished"] == len(sources)
    # Exactly one completion event, after every job's own.
    start = since[0][0].decode() if since else "0"
    events = []
    for event in client.events(start, timeout=5):
        if event.group == gid:
            events.append(event)
        if event.kind == "group" and event.id == gid:
            break
    assert [e.kind for e in events].count("group") == 1 and events[-1].kind == "group"
    assert sorted(e.id for e in events if e.kind == "job") == sorted(ids)
    assert events[-1].counts == {"total": 46, "succeeded": 40, "failed": 6, "cancelled": 0}
    with pytest.raises(UnknownGroup):
        client.group(str(uuid.uuid4()))


def test_the_cli_submits_a_group_shows_it_and_exports_its_results(
    pair: list[WorkerProcess], client: Client, redis_url: str, tmp_path: Path
) -> None:
    done = imgqueue(redis_url, "submit", "--group", "--top-k", "2", "cat.jpg", "missing.jpg")
    assert done.returncode == 0, done.stderr
    gid = done.stdout.strip()
    assert len(gid) == 36  # the group id alone: the ids come with `results`
    out = tmp_path / "results.jsonl"
    export = imgqueue(redis_url, "results", gid, "--out", str(out), "--wait", "--timeout", "60")
    assert export.returncode == 1, export.stderr  # one job failed
    assert "2 jobs (1 FAILURE, 1 SUCCESS)" in export.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == client.group_ids(gid)
    assert lines[0]["state"] == "SUCCESS" and len(lines[0]["result"]["predictions"]) == 2
    assert lines[1]["error"]["type"] == "SourceNotFound"
    shown = imgqueue(redis_url, "status", gid, "--json")
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert (state["total"], state["succeeded"], state["failed"], state["done"]) == (2, 1, 1, True)
    human = imgqueue(redis_url, "status", gid)
    assert "2/2 finished (100.0%), done" in human.stdout
    assert imgqueue(redis_url, "status", str(uuid.uuid4())).returncode == 2


def test_500_images_on_two_workers_with_one_sigkilled_count_exactly(
    pair: list[WorkerProcess], client: Client
) -> None:
    fast, slow = pair
    ids = client.submit_many(["cat.jpg"] * 500, top_k=1, bulk_size=16, group=True)
    gid = ids.group_id
    # Twenty jobs run twice besides: the same messages again, as a publish retry sends them.
    for task_id in ids[:20]:
        client.celery.send_task(
            TASK_NAME,
            args=["cat.jpg"],
            kwargs={"top_k": 1},
            task_id=task_id,
            headers={GROUP_HEADER: gid},
        )
    # The slow worker holds messages mid-inference (300 ms a batch): kill it there.
    wait_for(lambda: client.group(gid).finished >= 50, 30, "50 jobs finished")
    assert client.group(gid).finished < 500
    slow.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: client.group(gid).done, 60, "the group to finish", interval=0.1)
    assert time.monotonic() - killed < 40

    def drained() -> bool:  # every message run, the duplicates too
        return not queued_messages(client.redis, ["celery"]) and not held_messages(client.redis)

    wait_for(drained, 30, "every message to be acknowledged")
    state = client.group(gid)
    assert (state.succeeded, state.failed, state.cancelled, state.finished) == (500, 0, 0, 500)
    assert (state.queued, state.running, state.progress) == (0, 0, 1.0)
    r = client.results
    meta, done, _ = keys(gid)
    assert r.hlen(done) == 500
    assert r.hget(meta, "finished") == b"500"
    # The killed worker's bulk messages came back, and went on as single jobs.
    assert "redelivered: split into" in fast.log()
    assert all(o.state == "SUCCESS" for o in client.wait(ids, timeout=30))
    # One event per job and one for the group, however many times a job ran.
    events: Any = r.xrange(EVENTS_STREAM)
    mine = [f for _, f in events if f[b"group"] == gid.encode()]
    assert sorted(f[b"id"].decode() for f in mine if f[b"kind"] == b"job") == sorted(ids)
    assert [f[b"kind"] for f in mine].count(b"group") == 1
