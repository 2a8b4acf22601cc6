"""A soak at the default delivery settings: thousands of jobs, SIGKILLs, junk, two queues.

2,400 stand-in jobs over two queues with mixed priorities, sent in waves; between waves a
random worker is SIGKILLed and restarted (as a supervisor would), and junk messages go into the
queues. VISIBILITY_TIMEOUT (3600 s) and DEAD_WORKER_TIMEOUT (15 s) are the defaults.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.contract import queue_list
from core.deadletters import DeadLetters
from producer import Client
from tests.support.messages import held_messages, queued_messages
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess

QUEUES = ["celery", "bulk"]
JUNK = [
    b"not json at all",
    json.dumps({"body": "x", "headers": {}}).encode(),  # no properties
    b"[1, 2, 3]",
]


@pytest.fixture
def soak_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_soak_every_job_succeeds_through_kills_and_junk(
    soak_redis: RedisServer, worker_env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    env = {**worker_env, "REDIS_URL": soak_redis.url(), "MODEL": "sleep:50ms"}
    factory = WorkerFactory(env, tmp_path)
    args = ["-Q", ",".join(QUEUES)]
    slots: list[WorkerProcess] = [factory.start(wait=False, extra_args=args) for _ in range(3)]
    killed: list[WorkerProcess] = []
    try:
        for w in slots:
            w.wait_ready()
        client = Client(soak_redis.url())
        r = client.redis
        ids: list[str] = []
        junk_sent = 0
        for wave in range(6):
            for i in range(40):
                queue = QUEUES[i % 2]
                priority = rng.choice([None, 0, 1, 3, 5, 7, 9])
                ids += client.submit_many(["cat.jpg"] * 10, top_k=1, queue=queue, priority=priority)
            junk = JUNK[wave % len(JUNK)]
            r.lpush(queue_list(QUEUES[wave % 2], rng.choice([0, 4, 9])), junk)
            junk_sent += 1
            if wave == 5:
                break
            # Kill while this wave is being worked on: some of it done, most still to do.
            target = min(len(ids), sum(o.done for o in client._fetch(ids)) + 100)
            wait_for(
                lambda sent=list(ids), n=target: sum(o.done for o in client._fetch(sent)) >= n,
                60,
                "progress before the next kill",
                interval=0.05,
            )
            victim = rng.randrange(len(slots))
            slots[victim].kill(signal.SIGKILL)
            killed.append(slots[victim])
            slots[victim] = factory.start(wait=False, extra_args=args)  # the supervisor
            slots[victim].wait_ready()

        assert len(ids) == 2400 and len(killed) == 5
        started = time.monotonic()
        outcomes = list(client.wait(ids, timeout=240))
        states = {o.task_id: o.state for o in outcomes}
        assert len(states) == 2400 and set(states.values()) == {"SUCCESS"}
        # Afterwards nothing of any job is left in a queue, an inbox or a claim.
        wait_for(
            lambda: not queued_messages(r, QUEUES) and not held_messages(r),
            60,
            "queues, inboxes and claims to empty",
        )
        # Each killed worker was found dead by a live one, which returned what it held.
        logs = lambda: "".join(w.log() for w in factory.workers)  # noqa: E731
        wait_for(lambda: logs().count(" is dead (no heartbeat") == 5, 60, "5 dead consumers")
        returned = sum(
            int(line.split("returned ", 1)[1].split(" ", 1)[0])
            for line in logs().splitlines()
            if " is dead (no heartbeat" in line
        )
        assert returned > 0
        letters = DeadLetters(r, client.config).read()
        assert len(letters) == junk_sent
        assert {e.message for e in letters} <= set(JUNK)
        assert all(w.proc.poll() == -signal.SIGKILL for w in killed)
        assert all(w.alive() for w in slots)  # restarted ones, and those never killed
        live = {m.decode().split("-")[-2] for m in r.zrange("imgqueue:consumers", 0, -1)}
        assert all(str(w.pid) not in live for w in killed)  # the dead were swept
        print(
            f"2400 jobs, 5 kills ({returned} messages returned), {junk_sent} junk: all done "
            f"{time.monotonic() - started:.0f}s after the last wave"
        )
        client.close()
    finally:
        factory.stop_all()
        redis.Redis.from_url(soak_redis.url()).flushdb()
