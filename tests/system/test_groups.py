"""Job groups on real workers: `submit_many(..., group=True)` and `imgqueue submit --group`,
exact counters (a job counts once, even when its worker is SIGKILLed), progress and ETA,
exactly one completion event, and the results export."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.contract import TASK_NAME
from core.lifecycle import EVENTS_STREAM, GROUP_HEADER
from producer import Client
from producer.groups import GroupIds, UnknownGroup, keys
from tests.support.cli import imgqueue
from tests.support.messages import held_messages, queued_messages
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess

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
