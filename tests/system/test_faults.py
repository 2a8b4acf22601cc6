"""Faults inflicted on real processes: killed workers, poison jobs, SIGTERM, Redis restarts, load.

Every test here runs against its own private redis-server (with AOF, so it can be restarted
like a production Redis), never the session's or the machine's. DEAD_WORKER_TIMEOUT is 3 s so a
job held by a killed worker comes back within seconds (tests/system/test_delivery.py shows the
defaults); the stand-in model (MODEL=sleep:Nms) makes "mid-inference" a window of known length."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.errors import ResultTimeout
from producer import Client
from tests.support.messages import held_messages
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess
from worker.deliveries import delivery_key

DEAD_AFTER = 3
POISON = "test-poison"


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # appendfsync always: what a restart must not lose is written before Redis answers.
    extra = ["--appendonly", "yes", "--appendfsync", "always"]
    server = RedisServer(tmp_path_factory.mktemp("fault-redis"), extra=extra).start()
    yield server
    server.stop()


@pytest.fixture
def fault_workers(
    fault_redis: RedisServer, worker_env: dict[str, str], tmp_path: Path
) -> Iterator[WorkerFactory]:
    redis.Redis.from_url(fault_redis.url()).flushdb()
    env = {
        **worker_env,
        "REDIS_URL": fault_redis.url(),
        "DEAD_WORKER_TIMEOUT": str(DEAD_AFTER),
        "MODEL": "sleep:20ms",
        "TEST_POISON_SOURCE": POISON,
    }
    factory = WorkerFactory(env, tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def fclient(fault_redis: RedisServer) -> Iterator[Client]:
    with Client(fault_redis.url(), bulk_size=1) as c:  # faults, message by message
        yield c


def states(client: Client, ids: list[str]) -> dict[str, str]:
    return {o.task_id: o.state for o in client._fetch(ids)}


def count(client: Client, ids: list[str], *wanted: str) -> int:
    return sum(s in wanted for s in states(client, ids).values())


def delivery_counts(client: Client, ids: list[str]) -> list[int]:
    raws = client.redis.mget([delivery_key(t, 0) for t in ids])
    return [int(r or 0) for r in raws]


@pytest.mark.slow
def test_sigkill_mid_batch_every_job_completes_elsewhere(
    fault_workers: WorkerFactory, fclient: Client
) -> None:
    doomed = fault_workers.start(MODEL="sleep:30000ms", MAX_BATCH_SIZE="8")
    ids = fclient.submit_many(["cat.jpg"] * 12, top_k=1)
    # Jobs started (counted) and sleeping in "inference": kill the whole process now.
    wait_for(lambda: sum(c >= 1 for c in delivery_counts(fclient, ids)) >= 8, 30, "8 started")
    started = [t for t, c in zip(ids, delivery_counts(fclient, ids), strict=True) if c >= 1]
    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    fault_workers.start(MODEL="sleep:50ms")
    outcomes = list(fclient.wait(ids, timeout=60))
    assert sorted(o.state for o in outcomes) == ["SUCCESS"] * 12
    assert time.monotonic() - killed_at < 40
    # Every job that died with its worker ran again: delivered twice, not more.
    assert delivery_counts(fclient, started) == [2] * len(started)
    assert max(delivery_counts(fclient, ids)) == 2


def stuck(client: Client, ids: list[str]) -> list[tuple[str, str, int, bool, bool]]:
    """Unfinished jobs: (id, state, starts, claimed by a consumer, in the queue)."""
    st = states(client, ids)
    unacked = b" ".join(held_messages(client.redis))
    queued = b" ".join(client.redis.lrange("celery", 0, -1))
    return [
        (t, st[t], delivery_counts(client, [t])[0], t.encode() in unacked, t.encode() in queued)
        for t in ids
        if st[t] not in ("SUCCESS", "FAILURE")
    ]


def keep_alive(factory: WorkerFactory, n: int) -> None:
    """Replace dead workers, as a supervisor (systemd, Kubernetes) would."""
    alive = [w for w in factory.workers if w.alive()]
    for _ in range(n - len(alive)):
        factory.start(wait=False)


@pytest.mark.slow
def test_poison_job_is_capped_and_does_not_block_others(
    fault_workers: WorkerFactory, fclient: Client
) -> None:
    fault_workers.start()
    poison = fclient.submit(POISON)
    goods: list[str] = []

    def poison_done() -> bool:
        keep_alive(fault_workers, 1)
        goods.extend(fclient.submit_many(["coffee.jpg"] * 3, top_k=1))  # a steady trickle
        return fclient.status(poison).done

    wait_for(poison_done, 90, "the poison job to be capped", interval=0.5)
    outcome = fclient.status(poison)
    assert outcome.state == "FAILURE"
    assert outcome.error_type == "JobLost"
    assert "delivered 4 times" in (outcome.error_message or "")
    assert delivery_counts(fclient, [poison]) == [4]  # MAX_DELIVERIES=3 runs, then the cap
    keep_alive(fault_workers, 1)
    results = list(fclient.wait(goods, timeout=60))
    assert {o.state for o in results} == {"SUCCESS"}, [o for o in results if not o.ok][:3]
    # Jobs that died alongside it were re-run, never capped with it.
    assert max(delivery_counts(fclient, goods)) <= 2


@pytest.mark.slow
def test_a_bulk_message_that_kills_its_worker_is_split_and_only_the_culprit_is_lost(
    fault_workers: WorkerFactory, fclient: Client
) -> None:
    fault_workers.start()
    goods = ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    ids = fclient.submit_many([*goods, POISON], top_k=1, bulk_size=64)  # one bulk message

    def poison_done() -> bool:
        keep_alive(fault_workers, 1)
        return fclient.status(ids[-1]).done

    wait_for(poison_done, 90, "the poison image to be capped", interval=0.5)
    assert fclient.status(ids[-1]).error_type == "JobLost"
    results = list(fclient.wait(ids[:-1], timeout=60))
    assert {o.state for o in results} == {"SUCCESS"}
    # The redelivered bulk went on as single jobs under the same ids.
    assert all(count >= 1 for count in delivery_counts(fclient, ids[:-1]))


def test_message_in_a_dead_workers_inbox_is_recovered(
    fault_workers: WorkerFactory, fclient: Client
) -> None:
    """The state a SIGKILL leaves: a popped message in the inbox of a consumer now silent."""
    task_id = fclient.submit("cat.jpg", top_k=1)
    r = fclient.redis
    dead, inbox = "gone-1-deadbeef", "imgqueue:inbox:gone-1-deadbeef:celery"
    assert r.lmove("celery", inbox, "RIGHT", "LEFT")
    r.hset(f"imgqueue:inboxes:{dead}", inbox, "celery")
    r.zadd("imgqueue:consumers", {dead: 1.0})  # its last heartbeat: long ago
    worker = fault_workers.start()
    assert fclient.result(task_id, timeout=30)["source"] == "cat.jpg"
    assert not r.exists(inbox) and not r.exists(f"imgqueue:inboxes:{dead}")
    assert r.zscore("imgqueue:consumers", dead) is None
    assert f"consumer {dead} is dead" in worker.log()


def test_finished_jobs_leave_nothing_in_inboxes_or_unacked(
    fault_workers: WorkerFactory, fclient: Client
) -> None:
    """A message is in an inbox or claimed, never both; in neither once acked."""
    fault_workers.start(MAX_BATCH_SIZE="4")
    ids = fclient.submit_many(["cat.jpg", "rocket.jpg"] * 20, top_k=1)
    wait_for(lambda: count(fclient, ids, "SUCCESS") == len(ids), 60, "all jobs done")
    r = fclient.redis

    def settled() -> bool:
        consumers = r.zrange("imgqueue:consumers", 0, -1)
        return bool(consumers) and not held_messages(r) and not r.keys("imgqueue:unacked*")

    wait_for(settled, 10, "inboxes and claims to empty")


def test_sigterm_warm_shutdown_finishes_or_requeues(
    fault_workers: WorkerFactory, fclient: Client
) -> None:
    # Long timeouts: only a proper requeue at shutdown lets the jobs finish in time.
    slow = {"VISIBILITY_TIMEOUT": "600", "DEAD_WORKER_TIMEOUT": "300", "MODEL": "sleep:500ms"}
    first = fault_workers.start(CONCURRENCY="4", PREFETCH_MULTIPLIER="4", **slow)
    ids = fclient.submit_many(["rocket.jpg"] * 24, top_k=1)
    wait_for(lambda: count(fclient, ids, "STARTED") >= 4, 30, "jobs running")
    started = [t for t, s in states(fclient, ids).items() if s == "STARTED"]
    first.kill(signal.SIGTERM)
    assert first.proc.wait(30) == 0
    # The in-flight jobs finished before it exited; the reserved ones went back to the queue.
    assert {states(fclient, started)[t] for t in started} == {"SUCCESS"}
    fault_workers.start(**slow)
    assert {o.state for o in fclient.wait(ids, timeout=40)} == {"SUCCESS"}
    assert max(delivery_counts(fclient, ids)) == 1  # nothing ran twice


@pytest.mark.slow
def test_redis_restart_under_load(
    fault_workers: WorkerFactory, fault_redis: RedisServer, fclient: Client
) -> None:
    workers = [fault_workers.start(wait=False) for _ in range(2)]
    for w in workers:
        w.wait_ready()
    ids = fclient.submit_many(["astronaut.jpg"] * 400, top_k=1)
    wait_for(lambda: count(fclient, ids, "SUCCESS") >= 50, 60, "work under way")
    fault_redis.restart()  # SIGKILL, then start again on the same port from its AOF
    # The producer's wait rides out the restart and resumes; the workers reconnect.
    outcomes = list(fclient.wait(ids, timeout=120, reconnect_timeout=30))
    assert len(outcomes) == 400
    assert {o.state for o in outcomes} == {"SUCCESS"}
    assert all(w.alive() for w in workers)
    # And they keep consuming new work after the restart.
    after = fclient.submit_many(["cat.jpg"] * 20, top_k=1)
    assert {o.state for o in fclient.wait(after, timeout=60)} == {"SUCCESS"}


@pytest.mark.slow
def test_load_2000_jobs_one_worker_killed_midway(
    fault_workers: WorkerFactory, fclient: Client, image_root: Path
) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(image_root / "tiny.png")
    workers: list[WorkerProcess] = [
        fault_workers.start(wait=False, MODEL="sleep:5ms") for _ in range(2)
    ]
    for w in workers:
        w.wait_ready()
    ids = fclient.submit_many(["tiny.png"] * 2000, top_k=1)
    wait_for(lambda: count(fclient, ids, "SUCCESS") >= 700, 120, "a third done", interval=0.2)
    workers[0].kill(signal.SIGKILL)
    try:
        outcomes = list(fclient.wait(ids, timeout=90))
    except ResultTimeout:
        pytest.fail(f"jobs never finished: {stuck(fclient, ids)}")
    by_id = {o.task_id: o.state for o in outcomes}
    assert len(outcomes) == len(by_id) == 2000  # each job reported once
    assert set(by_id) == set(ids)
    assert set(by_id.values()) == {"SUCCESS"}
    counts = delivery_counts(fclient, ids)
    assert min(counts) == 1  # every job really ran
    # Only what the killed worker held (at most its 16 prefetched jobs) ran a second time.
    assert sum(c > 1 for c in counts) <= 16
    assert max(counts) <= 2
    assert workers[1].alive()


def test_a_dead_inference_thread_fails_fast_and_the_worker_exits(
    fault_workers: WorkerFactory, fclient: Client, tmp_path: Path
) -> None:
    """Inference raises a fatal error (TEST_FATAL_INFERENCE_AFTER): the waiting jobs fail at
    once with InferenceUnavailable and retry elsewhere, the worker stops being ready and exits
    with status 1 for its supervisor to restart it."""
    ready = tmp_path / "ready.json"
    doomed = fault_workers.start(
        TEST_FATAL_INFERENCE_AFTER="3", READY_FILE=str(ready), MODEL="sleep:200ms"
    )
    assert ready.exists()
    ids = fclient.submit_many(["cat.jpg"] * 30, top_k=1)
    started = time.monotonic()
    assert doomed.proc.wait(60) == 1
    assert time.monotonic() - started < 30
    assert not ready.exists()
    log = doomed.log()
    assert "the inference thread died" in log
    lines = [json.loads(x.split(" job ", 1)[1]) for x in log.splitlines() if " job {" in x]
    retried = [x for x in lines if x["outcome"] == "retry"]
    assert retried and {x["error_type"] for x in retried} == {"InferenceUnavailable"}
    fault_workers.start()  # what its supervisor does
    outcomes = list(fclient.wait(ids, timeout=60))
    assert {o.state for o in outcomes} == {"SUCCESS"}, [o for o in outcomes if not o.ok][:3]
