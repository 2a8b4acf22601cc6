"""Faults without a worker process: the gate that runs a suspect job alone, in this process
(tests/integration/test_faults.py: Redis that stays down; tests/system/test_faults.py kills
real workers)."""

from __future__ import annotations

import threading

from tests.support.waiting import wait_for
from worker.deliveries import Gate


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
