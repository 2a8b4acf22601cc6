"""The batcher's Celery settings with real workers (stand-in model): a lone job does not wait
out the batch delay, and prefetching leaves work for a second worker."""

from __future__ import annotations

from producer import Client
from tests.support.messages import held_messages, queued_messages
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
    """One worker must not hoard the queue: a busy one holds only its prefetch, the rest waits
    in the queue for another worker.

    Nothing here depends on when the workers start: the first is slow (2 s per job, one at a
    time), so its prefetch (4 task threads x PREFETCH_MULTIPLIER 1) is what it holds, checked
    in Redis before the second exists; the second, fast, then runs most of the rest however long
    it took to start (the first finishes one job per 2 s meanwhile).
    """
    common = {"MAX_BATCH_SIZE": "1", "MODEL_WEIGHTS": "random:0"}
    first = workers.start(MODEL="sleep:2000ms", **common)
    ids = client.submit_many(["cat.jpg"] * 40, top_k=1, bulk_size=1)  # one message each
    r = client.redis
    wait_for(lambda: len(held_messages(r)) >= 4, 60, "the first worker to take its prefetch")
    # Counted after the queue was read, so a job the first finished meanwhile is in `done`.
    queued = len(queued_messages(r, ["celery"]))
    done = _tasks_done(first.log())
    held = len(held_messages(r))
    assert queued >= 40 - 4 - done, f"{queued} queued, {held} held: the first worker hoards"
    second = workers.start(MODEL="sleep:20ms", **common)
    outcomes = list(client.wait(ids, timeout=180))
    assert all(o.ok for o in outcomes)
    wait_for(lambda: _tasks_done(first.log()) + _tasks_done(second.log()) >= 40, 10, "logs")
    assert _tasks_done(second.log()) >= 5, "the second worker got (almost) nothing"
    first.stop()
    second.stop()
