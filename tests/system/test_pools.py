"""POOL=prefork: the model loads in each forked child, never in the parent."""

from __future__ import annotations

from producer import Client
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory


def test_prefork_loads_the_model_after_the_fork(workers: WorkerFactory, client: Client) -> None:
    worker = workers.start(POOL="prefork", extra_args=["--concurrency", "2"])
    ids = client.submit_many(["cat.jpg", "coffee.jpg", "rocket.jpg"], top_k=1)
    assert all(o.ok for o in client.wait(ids, timeout=120))

    def ready_lines() -> list[str]:
        return [line for line in worker.log().splitlines() if "serving model" in line]

    # Children load independently; the second may finish after the jobs above.
    wait_for(lambda: len(ready_lines()) == 2, 60, "both children to load the model")
    assert all("ForkPoolWorker" in line for line in ready_lines())
    assert "(prefork)" in worker.log()
