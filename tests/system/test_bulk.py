"""Bulk messages (`classify_many`) on real workers: many images per message, each with its own
task id, result, state, error type and top_k, indistinguishable for pollers from `classify` jobs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from core.contract import BULK_TASK_NAME, result_key
from producer import Client
from producer.status import gather
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess

GOOD = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]


@pytest.fixture(scope="module")
def worker(workers: WorkerFactory) -> Iterator[WorkerProcess]:
    yield workers.start(FETCH_RETRY_BACKOFF="0.05")


@pytest.fixture
def sender(redis_url: str) -> Iterator[Celery]:
    app = Celery("bulk-tests", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


def send_bulk(sender: Celery, images: list[Any], **kwargs: Any) -> str:
    return str(sender.send_task(BULK_TASK_NAME, args=[images], kwargs=kwargs).id)


def meta(client: Client, task_id: str) -> dict[str, Any]:
    raw = client.redis.get(result_key(task_id))
    assert raw is not None, task_id
    data: dict[str, Any] = json.loads(raw)
    return data


def test_each_image_gets_its_own_result_like_a_single_job(
    worker: WorkerProcess, client: Client
) -> None:
    sources = [*GOOD, "missing.jpg", "truncated.jpg", "../etc/passwd"]
    ids = client.submit_many(sources, top_k=3)
    assert len(set(ids)) == len(sources)
    outcomes = {o.task_id: o for o in client.wait(ids, timeout=120)}
    by_source = dict(zip(sources, ids, strict=True))
    for name in GOOD:
        result = outcomes[by_source[name]].unwrap()
        assert result["source"] == name and len(result["predictions"]) == 3
    assert outcomes[by_source["missing.jpg"]].error_type == "SourceNotFound"
    assert outcomes[by_source["truncated.jpg"]].error_type == "NotAnImage"
    assert outcomes[by_source["../etc/passwd"]].error_type == "SourceNotAllowed"
    # The same stored form as a single `classify` job's, for pollers in any language.
    single = client.submit_many(["cat.jpg", "missing.jpg"], top_k=3, bulk_size=1)
    list(client.wait(single, timeout=60))
    for bulk_id, single_id in (
        (by_source["cat.jpg"], single[0]),
        (by_source["missing.jpg"], single[1]),
    ):
        a, b = meta(client, bulk_id), meta(client, single_id)
        assert set(a) == set(b) and a["status"] == b["status"] and a["task_id"] == bulk_id
        if a["status"] == "SUCCESS":
            assert a["result"]["predictions"] == b["result"]["predictions"]
        else:
            assert a["result"]["exc_type"] == b["result"]["exc_type"]


def test_per_image_top_k_and_invalid_items(
    worker: WorkerProcess, client: Client, sender: Celery
) -> None:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    images = [
        {"id": a, "source": "cat.jpg", "top_k": 1},
        {"id": b, "source": "coffee.jpg"},  # the message's top_k
        {"id": c, "source": "cat.jpg", "top_k": 0},  # outside the contract: this image only
        {"source": "no-id.jpg"},  # nothing to store it under: counted, logged
    ]
    bulk_id = send_bulk(sender, images, top_k=2)
    outcomes = {o.task_id: o for o in client.wait([a, b, c], timeout=60)}
    assert len(outcomes[a].unwrap()["predictions"]) == 1
    assert len(outcomes[b].unwrap()["predictions"]) == 2
    assert outcomes[c].error_type == "InvalidArguments"
    summary = client.result(bulk_id, timeout=30)
    assert summary == {
        "succeeded": 2,
        "failed": 1,
        "retrying": 0,
        "skipped": 0,
        "invalid": 1,
        "revoked": 0,
    }


def test_a_malformed_bulk_message_fails_its_images_and_the_worker_goes_on(
    worker: WorkerProcess, client: Client, sender: Celery
) -> None:
    a = str(uuid.uuid4())
    bad = send_bulk(sender, [{"id": a, "source": "cat.jpg"}], top_k="many")
    assert client.status(a).state in ("PENDING", "FAILURE")
    outcome = next(client.wait([a], timeout=30))
    assert outcome.error_type == "InvalidArguments"
    assert next(client.wait([bad], timeout=30)).error_type == "InvalidArguments"
    assert client.result(client.submit("cat.jpg"), timeout=30)["source"] == "cat.jpg"


def test_images_with_a_stored_result_are_skipped(
    worker: WorkerProcess, client: Client, sender: Celery
) -> None:
    done, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    stored = {"status": "SUCCESS", "result": {"kept": True}, "task_id": done}
    client.redis.set(result_key(done), json.dumps(stored))
    bulk_id = send_bulk(
        sender, [{"id": done, "source": "cat.jpg"}, {"id": fresh, "source": "cat.jpg"}]
    )
    assert client.result(fresh, timeout=30)["source"] == "cat.jpg"
    assert client.result(bulk_id, timeout=30)["skipped"] == 1
    assert meta(client, done)["result"] == {"kept": True}


def test_a_transient_failure_is_retried_for_that_image_alone(
    worker: WorkerProcess, client: Client, http_base: str
) -> None:
    flaky = f"{http_base}/flaky/2/cat.jpg?{uuid.uuid4().hex}"
    gone = f"{http_base}/status/503?{uuid.uuid4().hex}"
    ids = client.submit_many([flaky, "coffee.jpg", gone], top_k=1)
    outcomes = {o.task_id: o for o in client.wait(ids, timeout=60)}
    assert outcomes[ids[0]].ok  # 503, 503, then the file: the image's own retries
    assert outcomes[ids[1]].ok
    assert outcomes[ids[2]].error_type == "FetchFailed"  # FETCH_RETRIES used up
    log = worker.log()
    jobs = [json.loads(line.split("job ", 1)[1]) for line in log.splitlines() if " job {" in line]
    coffee = [j for j in jobs if j["id"] == ids[1]]
    assert [j["outcome"] for j in coffee] == ["success"]  # never run twice
    flaky_lines = [j for j in jobs if j["id"] == ids[0]]
    assert [j["outcome"] for j in flaky_lines] == ["retry", "retry", "success"]
    assert all(j.get("bulk") for j in flaky_lines)


def test_status_counts_bulk_images_as_jobs(worker: WorkerProcess, client: Client) -> None:
    list(client.wait(client.submit_many(GOOD * 2, top_k=1), timeout=60))

    def counted() -> bool:
        return bool(gather(client, ["celery"])["jobs_last_minute"] >= 8)

    wait_for(counted, 15, "the worker to count the bulk images")
