"""Hostile sources through a real worker: transient fetch errors retry with backoff,
permanent ones do not."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import Client, JobFailed
from tests.support.http_server import http_server
from tests.support.paths import SAMPLES
from tests.support.workers import WorkerFactory


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/img is IMAGE_ROOT; base/img2 is a sibling sharing its prefix; base/secret outside."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "img"
    (root / "sub").mkdir(parents=True)
    (base / "img2").mkdir()
    (base / "img2" / "cat.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (base / "secret.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (root / "cat.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (root / "big.jpg").write_bytes(b"\xff" * 5000)
    (root / "inside-link.jpg").symlink_to(root / "cat.jpg")
    (root / "escape.jpg").symlink_to(base / "secret.jpg")
    (root / "dir-escape").symlink_to(base)
    (root / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jpg")
    return root


# -- URLs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[tuple[str, dict[str, int]]]:
    counters: dict[str, int] = {}
    with http_server(tree, counters) as base:
        yield base, counters


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
