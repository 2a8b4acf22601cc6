"""The delivery layer (worker/broker) on real workers: junk, priorities, queues, dead workers.

Each test runs real `celery worker` processes against a private redis-server of this module.
Where a test says "defaults", no delivery setting is changed: VISIBILITY_TIMEOUT is 3600 s and
DEAD_WORKER_TIMEOUT 15 s, as in production.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from core.contract import queue_list
from core.deadletters import DeadLetters
from core.keys import CONSUMERS_KEY as CONSUMERS
from producer import Client
from tests.support.delivery import (
    dclient_fixture,  # noqa: F401  (the fixture `dclient`)
    dead_letter_reasons,
    dredis_fixture,  # noqa: F401  (the fixture `dredis`)
)
from tests.support.messages import held_messages, queued_messages
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, fake_old_redis
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess
from worker.deliveries import delivery_key


@pytest.fixture
def dworkers(
    dredis: RedisServer, worker_env: dict[str, str], tmp_path: Path
) -> Iterator[WorkerFactory]:
    redis.Redis.from_url(dredis.url()).flushdb()
    env = {**worker_env, "REDIS_URL": dredis.url(), "MODEL": "sleep:5ms"}
    factory = WorkerFactory(env, tmp_path)
    yield factory
    factory.stop_all()


def real_message(client: Client, source: str = "cat.jpg", **options: Any) -> bytes:
    """A message exactly as the producer writes it, taken from a queue nobody consumes."""
    client.submit(source, top_k=1, queue="parked", **options)
    raw = client.redis.rpop("parked")
    assert isinstance(raw, bytes)
    return raw


def with_changes(raw: bytes, change: Any) -> bytes:
    message = json.loads(raw)
    change(message)
    return json.dumps(message).encode()


def consumer_of(r: redis.Redis, worker: WorkerProcess, prefix: str = "") -> str:
    """The consumer id of a worker process (its heartbeat entry)."""

    def find() -> str | None:
        for member in r.zrange(f"{prefix}imgqueue:consumers", 0, -1):
            name = member.decode()
            if f"-{worker.pid}-" in name:
                return name
        return None

    found: str = wait_for(find, 30, f"worker {worker.name}'s heartbeat")
    return found


def states(client: Client, ids: list[str]) -> list[str]:
    return [o.state for o in client._fetch(ids)]


def metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_junk_is_dead_lettered_once_and_no_job_is_lost(
    dworkers: WorkerFactory, dclient: Client
) -> None:
    port = free_port()
    worker = dworkers.start(MAX_MESSAGE_BYTES="4096", METRICS_PORT=str(port))
    good = real_message(dclient)
    b64_broken = with_changes(good, lambda m: m.update(body="%%% not base64 %%%"))
    no_properties = with_changes(good, lambda m: m.pop("properties"))
    unknown = with_changes(good, lambda m: m["headers"].update(task="no.such.task"))
    pickled = with_changes(good, lambda m: m.update({"content-type": "application/x-python"}))
    body_not_json = with_changes(
        good, lambda m: m.update(body=base64.b64encode(b"[1, 2").decode("ascii"))
    )
    oversized = real_message(dclient, "cat.jpg?" + "x" * 5000)
    junk = [
        b"x",
        b"[1, 2, 3]",
        b"\xff\xfe binary",
        no_properties,
        b64_broken,
        body_not_json,
        pickled,
        unknown,
        oversized,
    ]
    r = dclient.redis
    ids = dclient.submit_many(["cat.jpg"] * 5, top_k=1)
    for item in junk:  # between good jobs, on the default and a priority list
        r.lpush("celery", item)
        ids += dclient.submit_many(["rocket.jpg"] * 2, top_k=1, priority=4)
    assert {o.state for o in dclient.wait(ids, timeout=60)} == {"SUCCESS"}
    wait_for(lambda: len(dead_letter_reasons(dclient)) == len(junk), 10, "every dead letter")
    assert dead_letter_reasons(dclient) == sorted(
        ["not-json"] * 3
        + ["bad-envelope", "bad-body", "bad-body", "bad-body"]
        + ["unknown-task", "too-large"]
    )
    assert worker.alive()
    assert worker.log().count("dead-lettered a message") == len(junk)  # logged once each
    assert metric(port, 'imgqueue_dead_lettered_total{reason="not-json"}') == 3.0
    assert metric(port, 'imgqueue_dead_lettered_total{reason="bad-body"}') == 3.0
    # Dead letters never come back by themselves: nothing queued, held or claimed (the last
    # good job's ack may land a moment after its result).
    wait_for(
        lambda: not queued_messages(r, ["celery"]) and not held_messages(r),
        10,
        "nothing queued or held",
    )
    entries = DeadLetters(r, dclient.config).read()
    assert {e.message for e in entries if e.reason == "unknown-task"} == {unknown}
    assert all(e.queue == "celery" and e.list_key == "celery" for e in entries)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "producer", "--redis-url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_dead_letters_can_be_listed_requeued_and_purged(
    dworkers: WorkerFactory, dclient: Client, dredis: RedisServer
) -> None:
    # A cap this low turns a normal job into a dead letter; a normal worker can run it later.
    long_source = "./" * 700 + "cat.jpg"
    strict = dworkers.start(MAX_MESSAGE_BYTES="2048")
    parked = dclient.submit(long_source, top_k=1, priority=7)
    dclient.redis.lpush("celery", b"junk")
    wait_for(lambda: len(dead_letter_reasons(dclient)) == 2, 30, "two dead letters")
    strict.stop()

    listed = cli(dredis.url(), "dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    by_reason = {e["reason"]: e for e in entries}
    assert set(by_reason) == {"too-large", "not-json"}
    assert parked in by_reason["too-large"]["message"]
    human = cli(dredis.url(), "dead-letters", "list")
    assert "too-large" in human.stdout and "2 shown, 2 in all" in human.stderr

    dworkers.start()
    requeued = cli(dredis.url(), "dead-letters", "requeue", by_reason["too-large"]["id"][:10])
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout
    assert dclient.result(parked, timeout=60)["source"] == long_source
    # It went back to its own priority list, and out of the dead-letter list.
    assert dead_letter_reasons(dclient) == ["not-json"]
    assert cli(dredis.url(), "dead-letters", "requeue").returncode == 2  # ids or --all
    missing = cli(dredis.url(), "dead-letters", "purge", "ffffffff")
    assert missing.returncode == 1 and "ffffffff" in missing.stderr
    purged = cli(dredis.url(), "dead-letters", "purge", "--all")
    assert "purged 1" in purged.stdout and dead_letter_reasons(dclient) == []


def test_priorities_run_highest_first_from_a_backlog(
    dworkers: WorkerFactory, dclient: Client
) -> None:
    """0 is the highest priority, 9 the lowest; no priority counts as 0; FIFO within one."""
    order = [9, None, 5, 0, 3, 9, 1, 7, None, 2, 6, 4, 8, 0, 3, 9]
    ids = [dclient.submit("cat.jpg", top_k=1, priority=p) for p in order]
    worker = dworkers.start(CONCURRENCY="1", PREFETCH_MULTIPLIER="1", MAX_BATCH_SIZE="1")
    assert {o.state for o in dclient.wait(ids, timeout=60)} == {"SUCCESS"}
    ran = [
        json.loads(line.split("job ", 1)[1])["id"]
        for line in worker.log().splitlines()
        if "job {" in line
    ]
    ranked = sorted(zip([p or 0 for p in order], ids, strict=True), key=lambda pair: pair[0])
    expected = [task_id for _, task_id in ranked]
    assert ran == expected


def test_many_queues_from_the_api_and_the_cli(
    dworkers: WorkerFactory, dclient: Client, dredis: RedisServer
) -> None:
    dworkers.start(extra_args=["-Q", "gpu,bulk"])
    bulk = dclient.submit_many(["cat.jpg"] * 6, top_k=1, queue="bulk", priority=9)
    gpu = dclient.submit("rocket.jpg", top_k=1, queue="gpu")
    done = cli(dredis.url(), "submit", "--queue", "gpu", "--priority", "0", "--wait", "cat.jpg")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "SUCCESS"
    assert {o.state for o in dclient.wait([*bulk, gpu], timeout=60)} == {"SUCCESS"}
    bad = cli(dredis.url(), "submit", "--priority", "10", "cat.jpg")
    assert bad.returncode == 2 and "priority" in bad.stderr
    # A plain Celery client (kombu's default priority steps 0, 3, 6, 9, as Flower's "apply")
    # writes priority 5 to the list of step 3: consumed too.
    plain = Celery("plain", broker=dredis.url(), set_as_current=False)
    plain.conf.update(task_serializer="json")
    try:
        sent = plain.send_task("classify", args=["cat.jpg"], queue="bulk", priority=5).id
    finally:
        plain.close()
    assert dclient.result(sent, timeout=30)["source"] == "cat.jpg"


def test_killed_workers_jobs_finish_on_a_standby_within_60s_at_defaults(
    dworkers: WorkerFactory, dclient: Client
) -> None:
    """Default settings, two queues, mixed priorities; SIGKILL with a batch mid-inference."""
    queues = ["-Q", "celery,bulk"]
    # Its batches take 30 s: whatever it holds when killed, it has not finished.
    doomed = dworkers.start(MODEL="sleep:30000ms", extra_args=queues)
    ids = dclient.submit_many(["cat.jpg"] * 12, top_k=1, priority=3)
    ids += dclient.submit_many(["rocket.jpg"] * 12, top_k=1, queue="bulk")
    cid = consumer_of(dclient.redis, doomed)
    r = dclient.redis
    wait_for(lambda: r.hlen(f"imgqueue:unacked:{cid}") >= 16, 30, "the doomed worker's claims")
    wait_for(lambda: states(dclient, ids).count("STARTED") >= 8, 30, "a batch in inference")
    standby = dworkers.start(MODEL="sleep:20ms", extra_args=queues)
    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    claims = r.hvals(f"imgqueue:unacked:{cid}")
    held = [json.loads(v.split(b"\n", 1)[1])["headers"]["id"] for v in claims]
    assert len(held) == 16
    assert {o.state for o in dclient.wait(ids, timeout=60)} == {"SUCCESS"}
    took = time.monotonic() - killed_at
    assert took < 60, f"{took:.0f}s"
    assert f"consumer {cid} is dead" in standby.log()
    standby_ran = standby.log()
    assert all(task_id in standby_ran for task_id in held)  # the standby did them
    counts = [int(r.get(delivery_key(t, 0)) or 0) for t in ids]
    assert max(counts) <= 2 and sorted(counts)[-8:] == [2] * 8  # the batch ran again, once


def test_a_lost_fetch_reply_is_recovered_by_the_live_worker(
    dworkers: WorkerFactory, dclient: Client
) -> None:
    """The state a dropped connection can leave: a popped message in a live consumer's inbox."""
    worker = dworkers.start()
    cid = consumer_of(dclient.redis, worker)
    raw = real_message(dclient)
    task_id = json.loads(raw)["headers"]["id"]
    dclient.redis.lpush(f"imgqueue:inbox:{cid}:celery", raw)
    started = time.monotonic()
    assert dclient.result(task_id, timeout=30)["source"] == "cat.jpg"
    assert time.monotonic() - started < 15  # within the heartbeat's time to live
    assert "a fetch reply was lost" in worker.log()
    assert worker.alive()


@pytest.mark.slow
def test_connections_killed_under_load_lose_nothing(
    dworkers: WorkerFactory, dclient: Client, dredis: RedisServer
) -> None:
    """CLIENT KILL drops every connection (fetches in flight, acks, heartbeats) again and again."""
    workers = [dworkers.start(wait=False, DEAD_WORKER_TIMEOUT="3") for _ in range(2)]
    for w in workers:
        w.wait_ready()
    ids = dclient.submit_many(["cat.jpg"] * 300, top_k=1)
    admin = redis.Redis(port=dredis.port)
    for _ in range(8):
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        time.sleep(0.5)
    assert {o.state for o in dclient.wait(ids, timeout=120)} == {"SUCCESS"}
    assert all(w.alive() for w in workers)
    try:
        wait_for(lambda: not held_messages(dclient.redis), 30, "no message held")
    except TimeoutError:  # say who holds what: a live consumer's claim, or a dead one's
        r = dclient.redis
        now = float(r.time()[0])
        scored = r.zrange(CONSUMERS, 0, -1, withscores=True)
        beats = {c.decode(): round(now - s, 1) for c, s in scored}
        held = {k.decode(): r.type(k).decode() for k in r.scan_iter("imgqueue:[iu]n*")}
        logs = "\n".join(w.log()[-3000:] for w in workers)
        raise AssertionError(f"held {held}, heartbeat ages {beats}\n{logs}") from None


def test_a_key_prefix_keeps_every_key_under_it_and_the_guarantee(
    dworkers: WorkerFactory, dredis: RedisServer
) -> None:
    prefix = "tenant1:"
    env = {"REDIS_KEY_PREFIX": prefix, "DEAD_WORKER_TIMEOUT": "3"}
    doomed = dworkers.start(MODEL="sleep:1000ms", extra_args=["-Q", "celery,bulk"], **env)
    with Client(dredis.url(), key_prefix=prefix, bulk_size=1) as client:
        ids = client.submit_many(["cat.jpg"] * 10, top_k=1, queue="bulk", priority=2)
        r = client.redis
        cid = consumer_of(r, doomed, prefix)
        wait_for(lambda: r.hlen(f"{prefix}imgqueue:unacked:{cid}") >= 8, 30, "claims")
        doomed.kill(signal.SIGKILL)
        dworkers.start(extra_args=["-Q", "celery,bulk"], **env)
        r.lpush(prefix + "celery", b"junk")
        assert {o.state for o in client.wait(ids, timeout=60)} == {"SUCCESS"}
        wait_for(lambda: dead_letter_reasons(client) == ["not-json"], 10, "the dead letter")
        assert client.result(client.submit("cat.jpg"), timeout=30)["source"] == "cat.jpg"
        keys = [k.decode() for k in r.keys("*")]
        assert keys and all(k.startswith(prefix) for k in keys), sorted(keys)[:5]
        assert r.get(f"{prefix}celery-task-meta-{ids[0]}") is not None
        assert r.exists(prefix + delivery_key(ids[0], 0))
        assert not r.exists(queue_list("bulk", 2))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "sentinel://127.0.0.1:1/0"}, "REDIS_SENTINEL_MASTER is not set"),
        ({"REDIS_KEY_PREFIX": "tenant1"}, "REDIS_KEY_PREFIX must end with"),
        ({"REDIS_URL": "amqp://guest@127.0.0.1//"}, "REDIS_URL must start with"),
    ],
)
def test_settings_that_cannot_keep_the_guarantee_refuse_to_start(
    dworkers: WorkerFactory, env: dict[str, str], message: str
) -> None:
    worker = dworkers.start(wait=False, **env)
    assert worker.proc.wait(60) != 0
    assert message in worker.log()


def test_a_redis_older_than_7_0_is_refused_at_start(dworkers: WorkerFactory) -> None:
    with fake_old_redis("6.0.16") as port:
        worker = dworkers.start(wait=False, REDIS_URL=f"redis://127.0.0.1:{port}/0")
        assert worker.proc.wait(60) != 0
    assert "Redis 7.0 or newer is needed (BLMOVE, LMOVE, script flags); 127.0.0.1:" in worker.log()
    assert "runs Redis 6.0.16" in worker.log()
