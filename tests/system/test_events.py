"""Completion events from a real worker: followed by other processes (a Python XREAD in a
subprocess, a `redis-cli` consumer group) and by `Client.events()`; a job run twice is
announced once."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from core.contract import TASK_NAME
from core.lifecycle import EVENTS_STREAM
from producer import Client
from producer.events import Event
from tests.support.cli import imgqueue
from tests.support.paths import ROOT
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess


@pytest.fixture(scope="module")
def worker(workers: WorkerFactory) -> Iterator[WorkerProcess]:
    yield workers.start(MODEL="sleep:5ms")


# A second process following the stream with plain redis-py XREAD, as any app would: it prints
# each entry as a JSON line and stops after `count` job events.
FOLLOWER = r"""
import json, sys
import redis
r = redis.Redis.from_url(sys.argv[1], decode_responses=True)
stream, left = sys.argv[2], int(sys.argv[3])
newest = r.xrevrange(stream, count=1)
last = newest[0][0] if newest else "0-0"
print("ready", flush=True)
while left > 0:
    for _, batch in r.xread({stream: last}, block=1000, count=100) or []:
        for entry_id, fields in batch:
            last = entry_id
            left -= fields["kind"] == "job"
            print(json.dumps(fields), flush=True)
"""


def redis_cli(redis_url: str, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-u", redis_url, "--raw", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def test_a_second_process_follows_the_stream(
    worker: WorkerProcess, client: Client, redis_url: str
) -> None:
    group = f"apps-{uuid.uuid4().hex[:8]}"
    # A consumer group made with redis-cli, as docs/contract.md shows: new entries only.
    assert redis_cli(redis_url, "XGROUP", "CREATE", EVENTS_STREAM, group, "$", "MKSTREAM") == "OK\n"
    sources = ["cat.jpg", "missing.jpg", "coffee.jpg", "not-an-image.jpg"]
    follower = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, redis_url, EVENTS_STREAM, str(len(sources) + 1)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().strip() == "ready"
        bulk = client.submit_many(sources, top_k=1)  # one bulk message
        single = client.submit("rocket.jpg", top_k=1, queue="celery")
        ids = [*bulk, single]
        outcomes = {o.task_id: o for o in client.wait(ids, timeout=60)}
        out, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.wait(10)
    seen = [json.loads(line) for line in out.splitlines()]
    events = {e["id"]: e for e in seen if e["id"] in ids}
    assert set(events) == set(ids)
    for task_id, outcome in outcomes.items():
        event = events[task_id]
        assert (event["kind"], event["state"], event["queue"]) == ("job", outcome.state, "celery")
        assert event["error"] == (outcome.error_type if outcome.state != "SUCCESS" else "")
    assert events[bulk[1]]["error"] == "SourceNotFound"
    assert events[bulk[3]]["error"] == "NotAnImage"
    # The consumer group got them too; XACK takes them off its pending list.
    raw = redis_cli(redis_url, "XREADGROUP", "GROUP", group, "c1", "STREAMS", EVENTS_STREAM, ">")
    assert all(task_id in raw for task_id in ids)
    pending = redis_cli(redis_url, "XPENDING", EVENTS_STREAM, group).split("\n")[0]
    assert int(pending) >= len(ids)


def test_client_events_goes_on_after_an_entry_and_times_out(
    worker: WorkerProcess, client: Client
) -> None:
    newest = client.results.xrevrange(EVENTS_STREAM, count=1)
    since = newest[0][0].decode() if newest else "0"
    following = client.events(timeout=30)  # "$": from this call on, not the first next()
    ids = client.submit_many(["astronaut.jpg", "cat.jpg", "missing.jpg"], top_k=1)
    assert len(list(client.wait(ids, timeout=30))) == 3  # all stored before the first read
    got: list[Event] = []
    for event in following:
        got.append(event)
        if {e.id for e in got} >= set(ids):
            break
    mine = [e for e in got if e.id in ids]
    assert sorted(e.state for e in mine) == ["FAILURE", "SUCCESS", "SUCCESS"]
    assert {e.error for e in mine} == {"", "SourceNotFound"}
    # Going on after the last one: nothing new, so the iterator ends after its timeout.
    started = time.monotonic()
    assert list(client.events(got[-1].entry_id, timeout=0.5)) == []
    assert time.monotonic() - started >= 0.5
    # The CLI prints the same as JSON lines.
    done = imgqueue(client.redis_url, "events", "--since", since, "--timeout", "1", "--kind", "job")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {x["id"] for x in lines} >= set(ids)


def test_the_cli_follows_through_12_s_of_quiet(worker: WorkerProcess, client: Client) -> None:
    # redis-py 8 reads with a 5 s socket timeout by default: an XREAD that blocked 5 s on such a
    # client timed out, and `imgqueue events` exited 3 after the first quiet 5 s.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": client.redis_url}
    command = [sys.executable, "-m", "producer", "events", "--timeout", "60", "--kind", "job"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as follower:
        try:
            with pytest.raises(subprocess.TimeoutExpired):  # still following after 12 s of quiet
                follower.wait(timeout=12)
            task_id = client.submit("cat.jpg", top_k=1)
            assert follower.stdout is not None
            ready = select.select([follower.stdout], [], [], 60)[0]
            line = follower.stdout.readline() if ready else ""
        finally:
            follower.kill()
            _, err = follower.communicate(timeout=10)
    assert line, f"no event within 60 s; the CLI said: {err}"
    assert json.loads(line)["id"] == task_id


def job_lines(worker: WorkerProcess, task_id: str, outcome: str) -> list[str]:
    """The worker's `job {...}` lines for one job and outcome (worker/joblog.py)."""
    return [
        line
        for line in worker.log().splitlines()
        if " job {" in line and task_id in line and f'"outcome": "{outcome}"' in line
    ]


def test_a_job_run_twice_is_announced_once(worker: WorkerProcess, client: Client) -> None:
    task_id = str(uuid.uuid4())
    for _ in range(2):  # the same message twice: a publish retry's duplicate
        client.celery.send_task(TASK_NAME, args=["cat.jpg"], kwargs={"top_k": 1}, task_id=task_id)
    assert client.result(task_id, timeout=30)["source"] == "cat.jpg"
    # Both copies ran, and both stored a SUCCESS (a job's store comes before its log line).
    wait_for(lambda: len(job_lines(worker, task_id, "success")) == 2, 30, "the second run")
    r = client.results
    mine = [f for _, f in r.xrange(EVENTS_STREAM) if f[b"id"] == task_id.encode()]
    assert [f[b"state"] for f in mine] == [b"SUCCESS"]
