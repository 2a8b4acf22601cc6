"""Hostile sources through a real worker: transient fetch errors retry with backoff,
permanent ones do not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from producer import Client, JobFailed
from tests.support.sources import (
    server_fixture,  # noqa: F401  (the fixture `server`)
    tree_fixture,  # noqa: F401  (the fixture `tree`)
)
from tests.support.workers import WorkerFactory

# -- the retry policy, through a real worker ----------------------------------------------------


@pytest.fixture(scope="module")
def retry_worker(workers: WorkerFactory) -> WorkerFactory:
    workers.start(MODEL="sleep:5ms", FETCH_RETRY_BACKOFF="0.1", FETCH_RETRIES="3")
    return workers


def test_transient_errors_retry_with_backoff_permanent_ones_do_not(
    retry_worker: WorkerFactory,
    client: Client,
    server: tuple[str, dict[str, int]],
    image_root: Path,
) -> None:
    base, hits = server
    flaky = client.submit(f"{base}/flaky/2/cat.jpg")  # 503, 503, then the image
    # "?w": paths of their own, apart from the in-process tests' hits on the same server.
    down = client.submit(f"{base}/status/503?w")
    gone = client.submit(f"{base}/status/404?w")
    junk = client.submit(f"{base}/big.jpg?w")  # served fine, but not an image
    started = time.monotonic()
    assert client.result(flaky, timeout=60)["image"]["format"] == "JPEG"
    assert hits["hits:/flaky/2/cat.jpg"] == 3
    with pytest.raises(JobFailed) as info:
        client.result(down, timeout=60)
    assert info.value.error_type == "FetchFailed"
    assert hits["hits:/status/503?w"] == 4  # the first try and FETCH_RETRIES=3 retries
    # Backoff 0.1, 0.2, 0.4 s: the retries waited, but not the production 1+2+4 s.
    assert 0.7 <= time.monotonic() - started < 6
    for task_id, error_type, path in [
        (gone, "SourceNotFound", "/status/404?w"),
        (junk, "NotAnImage", "/big.jpg?w"),
    ]:
        with pytest.raises(JobFailed) as info:
            client.result(task_id, timeout=60)
        assert info.value.error_type == error_type
        assert hits["hits:" + path] == 1  # permanent: never retried
