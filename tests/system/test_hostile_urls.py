"""Hostile URLs through real workers: malformed URLs fail at once, and secrets in URLs never
reach logs, errors, results or metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.contract import TASK_NAME
from producer import Client, JobFailed
from tests.support.ports import free_port
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess

# -- secrets in URLs ---------------------------------------------------------------------------

SECRETS = ["us'er", "p@ss", "w'or\"d", "a'b", "c%25", "süß", "topsecret"]
TRICKY = "http://us'er:p@ss%40w'or\"d@{host}/{path}?sig=a'b&t=c%25süß&k=topsecret"


@pytest.fixture
def loud_worker(workers: WorkerFactory) -> Iterator[tuple[WorkerProcess, int]]:
    port = free_port()
    # DEBUG: Celery's own per-task lines, with their argument reprs, are logged too.
    worker = workers.start(MODEL="sleep:5ms", METRICS_PORT=str(port), extra_args=["-l", "DEBUG"])
    yield worker, port
    worker.stop()


def test_secrets_never_reach_logs_errors_results_or_metrics(
    loud_worker: tuple[WorkerProcess, int], client: Client, http_base: str, image_root: Path
) -> None:
    worker, port = loud_worker
    host = http_base.removeprefix("http://")
    good = client.submit(TRICKY.format(host=host, path="cat.jpg"))
    bad = client.submit(TRICKY.format(host=host, path="status/404"))
    # Over the length limit: the Client refuses it, so it goes as another language's producer
    # would send it, and the worker must refuse it too.
    huge = client.celery.send_task(TASK_NAME, args=["x" * 100_000 + ".jpg"]).id
    result = client.result(good, timeout=60)
    with pytest.raises(JobFailed, match="longer than 8192"):
        client.result(huge, timeout=60)
    line = next(x for x in worker.log().splitlines() if f'"id": "{huge}"' in x)
    assert len(line) < 1500  # the source was cut before anything logged it
    with pytest.raises(JobFailed) as failure:
        client.result(bad, timeout=60)
    assert result["source"] == f"{http_base}/cat.jpg?REDACTED"
    wait_for(lambda: bad in worker.log(), 10, "the failure's log lines")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    stored = (client.redis.get(client.config.result_key(bad)) or b"").decode()
    for where, text in [
        ("the result", json.dumps(result)),
        ("the error", str(failure.value)),
        ("the stored failure", stored),
        ("the worker log", worker.log()),
        ("the metrics", metrics),
    ]:
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, f"{where} shows {leaked}"


def test_malformed_urls_fail_at_once_through_a_worker(
    loud_worker: tuple[WorkerProcess, int], client: Client
) -> None:
    """Not retried as a transient fetch error, not an InternalError: one try, a named error."""
    worker, _ = loud_worker
    for url in ("http://exa mple.com/x.jpg", "http://[::1/x.jpg", "http://a..b/x.jpg"):
        started = time.monotonic()
        task_id = client.submit(url)
        with pytest.raises(JobFailed) as failure:
            client.result(task_id, timeout=30)
        assert failure.value.error_type == "InvalidArguments", url
        assert time.monotonic() - started < 5
        lines = [
            json.loads(x.split(" job ", 1)[1])
            for x in worker.log().splitlines()
            if " job {" in x and task_id in x
        ]
        assert [line["outcome"] for line in lines] == ["failure"]  # one try, no retry
