"""The batcher's Celery settings with real workers (stand-in model): a lone job does not wait
out the batch delay, and prefetching leaves work for a second worker."""

from __future__ import annotations

from producer import Client
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory


def test_a_lone_job_does_not_wait_out_the_batch_delay(
    workers: WorkerFactory, client: Client
) -> None:
    """A job waiting for its own batch is no partner on its way (idle latency)."""
    workers.start(MODEL="sleep:0ms", MAX_BATCH_DELAY_MS="3000", MODEL_WEIGHTS="random:0")
    for _ in range(2):
        result = client.result(client.submit("cat.jpg", top_k=1), timeout=30)
        assert result["batch_size"] == 1
        assert result["timings_ms"]["inference"] < 1000
    workers.stop_all()


def _tasks_done(log: str) -> int:
    return log.count('"outcome": "success"')


def test_prefetch_leaves_work_for_a_second_worker(workers: WorkerFactory, client: Client) -> None:
    """One worker must not hoard the queue: a second one gets its share.

    Both are ready before anything is submitted: a worker that is still starting on a loaded
    machine would otherwise find the queue drained, which says nothing about prefetching.
    """
    env = {"MODEL": "sleep:200ms", "MAX_BATCH_SIZE": "1", "MODEL_WEIGHTS": "random:0"}
    first = workers.start(**env)
    second = workers.start(**env)
    ids = client.submit_many(["cat.jpg"] * 40, top_k=1, bulk_size=1)  # one message each
    outcomes = list(client.wait(ids, timeout=120))
    assert all(o.ok for o in outcomes)
    wait_for(lambda: _tasks_done(first.log()) + _tasks_done(second.log()) >= 40, 10, "logs")
    assert _tasks_done(second.log()) >= 5, "the second worker got (almost) nothing"
    assert _tasks_done(first.log()) >= 5
    first.stop()
    second.stop()
