"""Cancels and deadlines without a worker: the CLI, the start/cancel agreement in Redis
(worker/cancels.py, worker.deliveries.record_start), the shipped producer user's rights, deadline
parsing, and the batcher never waiting past a job's deadline (in-process)."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import torch
from celery import Celery

from producer import Client
from producer.cancel import deadline_at, parse_deadline
from producer.contract import result_key
from producer.jobs import CANCEL_TAKEN, cancel_key
from tests.support.cli import imgqueue
from tests.support.messages import queued_messages
from tests.support.redis_server import with_shipped_users
from worker import cancels
from worker.backend import Started
from worker.batcher import Batcher
from worker.deliveries import record_start
from worker.errors import Cancelled
from worker.settings import Settings

# -- with workers ----------------------------------------------------------------------------


def test_the_cli_cancels_and_sends_deadlines(redis_url: str, client: Client) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    at = "2100-01-02T03:04:05Z"
    args = ("submit", "a.jpg", "b.jpg", "--queue", queue, "--deadline", at, "--group")
    sent = imgqueue(redis_url, *args)
    assert sent.returncode == 0, sent.stderr
    bulk_ids = client.group_ids(sent.stdout.strip())
    done = client.submit_many(["cat.jpg"], queue=queue)[0]
    client.redis.set(result_key(done), json.dumps({"status": "SUCCESS", "result": {}}))
    out = imgqueue(redis_url, "cancel", "--group", sent.stdout.strip(), done)
    assert out.returncode == 1, out.stderr  # one was too late
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(bulk_ids) == 2 and lines == [
        {"id": done, "cancel": "too-late", "state": "SUCCESS"},
        *({"id": i, "cancel": "cancelled", "state": "PENDING"} for i in bulk_ids),
    ]
    (message,) = [m for m in queued_messages(client.redis, [queue]) if b"a.jpg" in _body(m)]
    entries = json.loads(_body(message))[0][0]
    assert {e["deadline"] for e in entries} == {datetime.fromisoformat(at).timestamp()}
    client.redis.delete(queue)


def _body(raw: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(raw)["body"])


# -- in-process, on the session's Redis --------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({})


def _start(r: redis.Redis, task_id: str, settings: Settings, redelivered: bool = False) -> int:
    started = Started(result_key(task_id), json.dumps({"status": "STARTED"}), 60)
    return record_start(r, task_id, 0, settings, redelivered, started, cancels=True)


def test_a_start_and_a_cancel_agree_whichever_comes_first(
    redis_url: str, redis_client: redis.Redis, settings: Settings
) -> None:
    r = redis_client
    with Client(redis_url) as c:
        first = str(uuid.uuid4())  # cancelled before it starts
        assert c.cancel([first]).cancelled == [first]
        with pytest.raises(Cancelled):
            _start(r, first, settings)
        assert r.get(cancel_key(first)) == CANCEL_TAKEN.encode()  # kept until REVOKED is stored
        # The producer that cancels while the worker ends it reports it cancelled.
        assert c.cancel([first]).cancelled == [first]
        assert r.get(cancel_key(first)) == CANCEL_TAKEN.encode()

        second = str(uuid.uuid4())  # started before the cancel
        assert _start(r, second, settings) == 1
        result = c.cancel([second])
        assert result.too_late == [second] and result.states == {second: "STARTED"}
        assert not r.exists(cancel_key(second))

    # A redelivered job that had already ended REVOKED ends again, storing nothing.
    third = str(uuid.uuid4())
    r.set(result_key(third), json.dumps({"status": "REVOKED", "result": {}}))
    with pytest.raises(cancels.Ended):
        _start(r, third, settings, redelivered=True)
    assert json.loads(r.get(result_key(third)) or b"")["status"] == "REVOKED"


def test_a_bulk_message_starts_its_images_in_one_write_and_cancels_agree(
    redis_url: str, settings: Settings
) -> None:
    """A bulk message's first delivery writes every image's STARTED (and its own) with one
    MSETNX in the round trip of its count (worker/cancels.BulkStart): a cancel made before
    wins, one made after is too late. An image with a state already makes it write nothing:
    the images then start one by one, and a SUCCESS stays as it is."""
    app = Celery("bulk-start", backend=f"worker.backend:ResultBackend+{redis_url}")
    r = app.backend.client
    request = SimpleNamespace(id=str(uuid.uuid4()), hostname="w@h", retries=0)
    task = SimpleNamespace(app=app, request=request)

    def status(task_id: str) -> str:
        return str(json.loads(r.get(result_key(task_id)) or b"{}").get("status", "PENDING"))

    ids = [str(uuid.uuid4()) for _ in range(4)]
    images = [SimpleNamespace(id=i, deadline=None) for i in ids]
    assert cancels.bulk_start(task, images, "", redelivered=True) is None  # a redelivery
    with Client(redis_url) as c:
        assert c.cancel(ids[:1]).cancelled == ids[:1]
        begun = cancels.bulk_start(task, images, "", redelivered=False)
        assert begun is not None
        r.config_resetstat()
        assert record_start(r, request.id, 0, settings, False, rider=begun) == 1
        calls = {k: v["calls"] for k, v in r.info("commandstats").items()}
        assert begun.written and calls["cmdstat_msetnx"] == 1 and calls["cmdstat_set"] == 1
        assert {status(i) for i in [request.id, *ids]} == {"STARTED"}
        assert set(cancels.start_images(task, images, "", begun=begun)) == {ids[0]}
        result = c.cancel(ids)
        assert result.cancelled == ids[:1] and result.too_late == ids[1:]
        assert r.ttl(result_key(ids[1])) == -1  # until its final state, or:
        cancels.keep_started(task, ids[1:])  # going on in another message (retry, split)
        assert 0 < r.ttl(result_key(ids[1])) <= 86400

    done, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    r.set(result_key(done), json.dumps({"status": "SUCCESS", "result": {}}))
    request.id = str(uuid.uuid4())
    images = [SimpleNamespace(id=i, deadline=None) for i in (done, fresh)]
    begun = cancels.bulk_start(task, images, "", redelivered=False)
    assert begun is not None and record_start(r, request.id, 0, settings, False, rider=begun)
    assert not begun.written and status(fresh) == "PENDING"  # all or nothing
    assert cancels.start_images(task, images, "", begun=begun) == {}
    assert [status(i) for i in (done, fresh, request.id)] == ["SUCCESS", "STARTED", "STARTED"]
    app.close()


def test_the_shipped_producer_user_may_cancel_and_nothing_more(
    tmp_path: Path, settings: Settings
) -> None:
    """deploy/redis.conf's users: the producer writes cancels (a selector on imgqueue:cancel:*)
    and still cannot delete or overwrite anything else."""
    server = with_shipped_users(tmp_path)
    worker = redis.Redis(port=server.port, username="worker", password="imgqueue-worker-dev")
    try:
        url = f"redis://producer:imgqueue-producer-dev@127.0.0.1:{server.port}/0"
        with Client(url) as producer:
            queued, started = str(uuid.uuid4()), str(uuid.uuid4())
            _start(worker, started, settings)
            result = producer.cancel([queued, started])
            assert result.cancelled == [queued] and result.too_late == [started]
            assert worker.exists(cancel_key(queued)) and not worker.exists(cancel_key(started))
            r: redis.Redis = producer.results
            for attempt in (
                lambda: r.delete("celery"),
                lambda: r.set("celery", "x"),
                lambda: r.set(result_key(queued), "{}"),
                lambda: r.getdel(result_key(started)),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()
    finally:
        worker.close()
        server.stop()


def test_deadlines_given_and_parsed() -> None:
    assert deadline_at(None) is None
    assert deadline_at(30, now=1000.0) == 1030.0
    assert deadline_at(datetime(2100, 1, 2, tzinfo=UTC)) == 4102531200.0
    for bad in (0, -1, float("nan"), True, "30"):
        with pytest.raises(ValueError):
            deadline_at(bad)  # type: ignore[arg-type]
    assert parse_deadline("2.5") == 2.5
    assert parse_deadline("2100-01-02T00:00:00Z") == datetime(2100, 1, 2, tzinfo=UTC)
    for bad_text in ("0", "soon", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_deadline(bad_text)
    assert cancels.expired(None) is None and cancels.expired(100.0, now=99.0) is None
    assert isinstance(cancels.expired(100.0, now=100.5), Exception)


def test_a_batch_never_waits_past_a_jobs_deadline() -> None:
    batcher = Batcher(lambda batch: batch.flatten(1), max_batch_size=8, max_delay=30.0)
    try:
        with batcher.upcoming():  # a partner "on its way" would hold the batch 30 s
            t0 = time.monotonic()
            future = batcher.submit(torch.zeros(1), deadline=time.monotonic() + 0.1)
            assert future.result(timeout=10)[1] == 1
            assert time.monotonic() - t0 < 5
    finally:
        batcher.stop()
