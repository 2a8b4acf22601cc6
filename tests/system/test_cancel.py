"""Cancels and deadlines (producer/cancel.py, worker/cancels.py) on a real worker.

One worker for the module, started only after jobs were submitted and cancelled while none ran:
a cancel waits in Redis for its message. The stand-in model (MODEL=sleep:300ms) with two task
threads makes a backlog of known length, and "running" a window of known length; sources are
URLs on a loopback server that counts each fetch, so "never fetched" is checked, not assumed.
Last, the CLI as a process cancels a group and sends deadlines, on a queue no worker reads."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from core.contract import BULK_TASK_NAME, ERROR_TYPES, TASK_NAME, result_key
from core.lifecycle import DEADLINE_HEADER, cancel_key
from producer import Client
from producer.client import Outcome
from tests.support.cli import imgqueue
from tests.support.http_server import http_server
from tests.support.messages import queued_messages
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess

LATENCY = "sleep:300ms"


@dataclass
class Early:
    """Jobs submitted, and some cancelled, before any worker ran."""

    singles: list[str]
    bulk: list[str]
    expired: list[str]  # single and bulk-carried, their deadline already past
    cancelled: list[str]
    sources: dict[str, str]  # id -> the URL path the loopback server counts


@pytest.fixture(scope="module")
def hits() -> dict[str, int]:
    return {}


@pytest.fixture(scope="module")
def http(image_root: Path, hits: dict[str, int]) -> Iterator[str]:
    with http_server(image_root, hits) as base:
        yield base


def urls(http: str, tag: str, n: int) -> list[str]:
    return [f"{http}/cat.jpg?{tag}={i}-{uuid.uuid4().hex[:6]}" for i in range(n)]


def fetched(hits: dict[str, int], url: str) -> int:
    """How often the loopback server was asked for `url`."""
    return hits.get("hits:/" + url.split("/", 3)[3], 0)


@pytest.fixture(scope="module")
def early(workers: WorkerFactory, redis_url: str, http: str) -> Early:
    """Submit and cancel with no worker running, then start the module's worker."""
    with Client(redis_url) as c:
        single_urls, bulk_urls = urls(http, "s", 4), urls(http, "b", 6)
        singles = c.submit_many(single_urls, bulk_size=1)
        bulk = c.submit_many(bulk_urls, bulk_size=6)
        late_urls = urls(http, "e", 4)
        # Past before the worker starts (a deadline already past is refused at submit).
        soon = datetime.now(UTC) + timedelta(seconds=2)
        expired = c.submit_many(late_urls[:2], bulk_size=1, deadline=soon)
        expired += c.submit_many(late_urls[2:], bulk_size=2, deadline=soon)
        result = c.cancel([*singles[:2], *bulk[:3]])
    assert result.cancelled == [*singles[:2], *bulk[:3]]
    assert not result.too_late and not result.unknown
    assert set(result.states.values()) == {"PENDING"}
    sources = dict(zip(singles + bulk + expired, single_urls + bulk_urls + late_urls, strict=True))
    wait_for(lambda: datetime.now(UTC) > soon, 10, "the deadline of the late jobs to pass")
    workers.start(MODEL=LATENCY, CONCURRENCY="2", MAX_BATCH_SIZE="4")
    return Early(singles, bulk, expired, result.cancelled, sources)


@pytest.fixture(scope="module")
def worker(early: Early, workers: WorkerFactory) -> WorkerProcess:
    return workers.workers[0]


@pytest.fixture
def sender(redis_url: str) -> Iterator[Celery]:
    app = Celery("cancel-tests", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


def ended(client: Client, ids: list[str], timeout: float = 60) -> dict[str, Outcome]:
    return {o.task_id: o for o in client.wait(ids, timeout=timeout)}


def stored(client: Client, task_id: str) -> dict[str, Any]:
    raw = client.redis.get(result_key(task_id))
    assert raw is not None
    meta: dict[str, Any] = json.loads(raw)
    return meta


def job_lines(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    lines = [line.split("job ", 1)[1] for line in worker.log().splitlines() if " job {" in line]
    return {line["id"]: line for line in map(json.loads, lines)}


# -- with workers ----------------------------------------------------------------------------


def test_cancels_made_while_no_worker_ran_hold_when_one_starts(
    early: Early, worker: WorkerProcess, client: Client, hits: dict[str, int]
) -> None:
    outcomes = ended(client, early.singles + early.bulk + early.expired)
    for task_id in early.cancelled:
        o = outcomes[task_id]
        assert (o.state, o.error_type) == ("REVOKED", "Cancelled"), o
        meta = stored(client, task_id)  # shaped like a FAILURE's, for apps in any language
        assert meta["result"]["exc_type"] == "Cancelled" and "predictions" not in meta["result"]
        assert fetched(hits, early.sources[task_id]) == 0
        assert not client.redis.exists(cancel_key(task_id))  # the cancel is gone with the job
    for task_id in early.expired:
        o = outcomes[task_id]
        assert (o.state, o.error_type) == ("REVOKED", "Expired"), o
        assert fetched(hits, early.sources[task_id]) == 0
    for task_id in set(early.singles + early.bulk) - set(early.cancelled):
        assert outcomes[task_id].ok
        assert fetched(hits, early.sources[task_id]) == 1
    lines = job_lines(worker)
    for task_id in early.cancelled + early.expired:
        assert lines[task_id]["outcome"] == "revoked"
        assert lines[task_id]["error_type"] in ("Cancelled", "Expired")
        assert "timings_ms" not in lines[task_id]
    # A job that ended cancelled stays cancelled: cancelling it again says so.
    again = client.cancel(early.cancelled[:1] + early.expired[:1])
    assert again.cancelled == early.cancelled[:1] and again.too_late == early.expired[:1]


def test_a_finished_job_is_too_late_and_an_unusable_id_unknown(
    worker: WorkerProcess, client: Client, http: str
) -> None:
    done = client.submit(urls(http, "f", 1)[0])
    assert client.result(done, timeout=60)["predictions"]
    result = client.cancel([done, "", "x" * 300, done])
    assert result.too_late == [done] and result.cancelled == []
    assert result.unknown == ["", "x" * 300]
    assert result.states == {done: "SUCCESS"} and not result.all_cancelled
    assert not client.redis.exists(cancel_key(done))
    assert client.status(done).ok


def test_a_running_job_finishes_and_is_reported_too_late(
    worker: WorkerProcess, client: Client, http: str
) -> None:
    # Bulk-carried: each image gets its STARTED state when the message starts.
    ids = client.submit_many(urls(http, "r", 2), bulk_size=2)
    wait_for(lambda: client.status(ids[0]).state == "STARTED", 30, "the image to start", 0.005)
    result = client.cancel(ids)
    assert result.too_late == ids, result
    assert all(o.ok for o in ended(client, ids).values())
    assert not any(client.redis.exists(cancel_key(i)) for i in ids)


def test_deadlines_behind_a_backlog(worker: WorkerProcess, client: Client, http: str) -> None:
    # Two task threads, 300 ms a batch: eight jobs ahead take 1.2 s at least.
    backlog = client.submit_many(urls(http, "q", 8), bulk_size=1)
    short = client.submit_many(urls(http, "d", 2), bulk_size=1, deadline=0.6)
    short += client.submit_many(urls(http, "D", 3), bulk_size=3, deadline=0.6)
    roomy = client.submit(urls(http, "l", 1)[0], deadline=120)
    outcomes = ended(client, [*backlog, *short, roomy])
    assert all(outcomes[i].ok for i in [*backlog, roomy])
    for task_id in short:
        assert (outcomes[task_id].state, outcomes[task_id].error_type) == ("REVOKED", "Expired")


def test_celery_control_revoke_still_works(
    worker: WorkerProcess, client: Client, sender: Celery, http: str, hits: dict[str, int]
) -> None:
    backlog = client.submit_many(urls(http, "k", 6), bulk_size=1)
    single_url, image_urls = urls(http, "K", 1)[0], urls(http, "B", 2)
    single = client.submit(single_url)
    images = client.submit_many(image_urls, bulk_size=2)
    urls_of = {single: single_url, images[0]: image_urls[0]}
    sender.control.revoke([single, images[0]])
    outcomes = ended(client, [*backlog, single, *images])
    assert all(outcomes[i].ok for i in [*backlog, images[1]])
    for task_id, url in ((single, urls_of[single]), (images[0], urls_of[images[0]])):
        # Celery's own REVOKED, a single job and a bulk-carried image alike: never fetched.
        assert (outcomes[task_id].state, outcomes[task_id].error_type) == (
            "REVOKED",
            "TaskRevokedError",
        )
        assert fetched(hits, url) == 0
    assert "TaskRevokedError" in ERROR_TYPES, "a type results carry is in the contract"


def test_malformed_deadlines_from_other_producers_fail_the_job(
    worker: WorkerProcess, client: Client, sender: Celery
) -> None:
    single = str(
        sender.send_task(TASK_NAME, args=["cat.jpg"], headers={DEADLINE_HEADER: "soon"}).id
    )
    images: list[dict[str, Any]] = [
        {"id": str(uuid.uuid4()), "source": "cat.jpg", "deadline": "soon"},
        {"id": str(uuid.uuid4()), "source": "cat.jpg"},
        {"id": str(uuid.uuid4()), "source": "cat.jpg", "deadline": time.time() + 60},
    ]
    sender.send_task(BULK_TASK_NAME, args=[images])
    outcomes = ended(client, [single, *(i["id"] for i in images)])
    assert outcomes[single].error_type == "InvalidArguments"
    assert outcomes[images[0]["id"]].error_type == "InvalidArguments"
    assert outcomes[images[1]["id"]].ok and outcomes[images[2]["id"]].ok


# -- the CLI as a process, on a queue no worker reads ------------------------------------------


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
