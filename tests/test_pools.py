"""POOL=prefork: the model loads in each forked child, never in the parent."""

from __future__ import annotations

from producer import Client
from tests.support import WorkerFactory


def test_prefork_loads_the_model_after_the_fork(workers: WorkerFactory, client: Client) -> None:
    worker = workers.start(POOL="prefork", extra_args=["--concurrency", "2"])
    ids = client.submit_many(["cat.jpg", "coffee.jpg", "rocket.jpg"], top_k=1)
    assert all(o.ok for o in client.wait(ids, timeout=120))
    ready_lines = [line for line in worker.log().splitlines() if "model ready" in line]
    assert len(ready_lines) == 2
    assert all("ForkPoolWorker" in line for line in ready_lines)
    assert "(prefork)" in worker.log()
