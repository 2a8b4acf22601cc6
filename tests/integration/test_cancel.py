"""Cancels without a worker, on a real Redis: the start/cancel agreement (worker/cancels.py,
worker.deliveries.record_start) and the shipped producer user's rights."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from celery import Celery

from core.contract import result_key
from core.lifecycle import CANCEL_TAKEN, cancel_key
from producer import Client
from tests.support.redis_server import with_shipped_users
from worker import cancels
from worker.backend import Started
from worker.deliveries import record_start
from worker.errors import Cancelled
from worker.settings import Settings


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
