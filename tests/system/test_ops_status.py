"""`imgqueue status` and the queue exporter against a real worker holding jobs.

The worker's stand-in model sleeps 30 s per batch and it takes 4 jobs at a time, so the numbers
hold still while they are read: 4 in flight, the rest of `celery` waiting, a queue nobody
consumes with a backlog at priority 4, one dead letter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer import Client
from tests.support.cli import imgqueue as cli
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess


@pytest.fixture(scope="module")
def holding(workers: WorkerFactory, redis_url: str) -> Iterator[WorkerProcess]:
    worker = workers.start(MODEL="sleep:30000ms", CONCURRENCY="4", MAX_BATCH_SIZE="4")
    with Client(redis_url, bulk_size=1) as c:  # one message per job: 60 claims to count
        c.redis.lpush("celery", b"not a message")  # first, so taken before the jobs fill it
        wait_for(lambda: c.redis.llen("imgqueue:dead-letters") == 1, 30, "the dead letter")
        c.submit_many(["cat.jpg"] * 60, top_k=1)
        c.submit_many(["cat.jpg"] * 5, top_k=1, queue="parked", priority=4)
    yield worker
    worker.kill()


def test_status_shows_queues_workers_and_dead_letters(
    holding: WorkerProcess, redis_url: str
) -> None:
    def read() -> dict[str, object]:
        out = cli(redis_url, "status", "--json", "--queue", "celery", "--queue", "parked")
        assert out.returncode == 0, out.stderr
        state: dict[str, object] = json.loads(out.stdout)
        return state

    state = wait_for(
        lambda: (s := read())["queues"]["celery"]["in_flight"] == 4 and s,
        30,  # type: ignore[index]
        "4 jobs in flight",
    )
    queues = state["queues"]
    assert queues["celery"]["depth"] == 56 and queues["celery"]["by_priority"] == {"0": 56}
    assert queues["parked"] == {"depth": 5, "in_flight": 0, "by_priority": {"4": 5}}
    assert state["dead_letters"] == 1 and state["consumers"] >= 1
    (info,) = state["workers"].values()
    assert info["ready"] is True and info["model"] == "sleep:30000ms" and info["pid"] == holding.pid
    human = cli(redis_url, "status", "--queue", "parked")
    assert "parked" in human.stdout and "dead letters: 1" in human.stdout
    assert "ready  sleep:30000ms" in human.stdout


def test_the_exporter_reports_the_same_numbers_once_for_the_cluster(
    holding: WorkerProcess, redis_url: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "QUEUES": "celery,parked",
        "EXPORTER_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.exporter"], env=env, stderr=subprocess.DEVNULL
    )
    try:

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        m = wait_for(scrape, 30, "the exporter")
        assert m[("imgqueue_exporter_up", ())] == 1
        assert m[("imgqueue_queue_depth", (("queue", "celery"),))] == 56
        assert m[("imgqueue_queue_depth", (("queue", "parked"),))] == 5
        assert (
            m[("imgqueue_queue_depth_by_priority", (("priority", "4"), ("queue", "parked")))] == 5
        )
        assert m[("imgqueue_jobs_in_flight", (("queue", "celery"),))] == 4
        assert m[("imgqueue_dead_letters", ())] == 1
        assert m[("imgqueue_consumers", (("state", "live"),))] >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/queues", timeout=2) as r:
            doc = json.loads(r.read())
        assert doc["queues"]["celery"] == {"depth": 56, "in_flight": 4, "by_priority": {"0": 56}}
        imported = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, services.exporter; "
                "print(sorted(m for m in ('torch', 'celery', 'kombu') if m in sys.modules))",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert imported == "[]"  # a small process: no torch, no Celery
    finally:
        proc.terminate()
        proc.wait(10)
