"""Faults without a worker process: the producer's clear error when Redis stays down, and the
gate that runs a suspect job alone (tests/system/test_faults.py kills real workers)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from core.errors import BrokerUnavailable
from producer import Client
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from worker.deliveries import Gate


def test_producer_wait_gives_a_clear_error_when_redis_stays_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "gone").start()
    with Client(server.url(), bulk_size=1) as client:
        task_id = client.submit("cat.jpg")  # no worker: it stays queued
        server.stop(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
            list(client.wait([task_id], timeout=None, reconnect_timeout=2))
        assert time.monotonic() - started < 15
        with pytest.raises(BrokerUnavailable):
            client.submit("cat.jpg")


def test_gate_runs_a_suspect_alone_once_earlier_jobs_are_acknowledged() -> None:
    gate = Gate(settle_timeout=10)
    events: list[str] = []
    release = threading.Event()

    def ordinary() -> None:
        with gate.shared("a"):
            events.append("a runs")
            release.wait(10)

    def suspect() -> None:
        with gate.alone("s"):
            events.append("s runs")

    first = threading.Thread(target=ordinary)
    first.start()
    wait_for(lambda: events == ["a runs"], 5, "the ordinary job to start")
    second = threading.Thread(target=suspect)
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waits while "a" runs
    release.set()
    first.join(5)
    second.join(0.3)
    assert second.is_alive()  # "a" returned, but its message is not acknowledged yet
    gate.settled("a")
    second.join(5)
    assert events == ["a runs", "s runs"]
