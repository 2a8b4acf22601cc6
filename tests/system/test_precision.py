"""int8 through a real worker, end to end: valid results that say which precision ran."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import Client
from tests.support.workers import WorkerFactory, WorkerProcess


@pytest.fixture(scope="module")
def int8_worker(workers: WorkerFactory) -> Iterator[WorkerProcess]:
    yield workers.start(PRECISION="int8")


def test_int8_worker_end_to_end(
    int8_worker: WorkerProcess, client: Client, weights_file: Path
) -> None:
    from worker.model.weights import file_digest

    names = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]
    results = [o.unwrap() for o in client.wait(client.submit_many(names, top_k=5), timeout=120)]
    assert {r["precision"] for r in results} == {"int8"}
    assert {r["weights"] for r in results} == {f"file:{file_digest(weights_file)[:12]}:int8-ptq"}
    assert all(len(r["predictions"]) == 5 for r in results)
