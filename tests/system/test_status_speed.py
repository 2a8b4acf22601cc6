"""`imgqueue status` answers once every worker with a fresh heartbeat has, not at its --timeout.

A broadcast used to wait its whole timeout past the last reply, twice (`imgqueue_info`, then
`ping`): 4.6 s for an idle cluster. The workers run the stand-in model: what is measured is
the control channel, not a model.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from tests.support.cli import run_cli
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess

# --timeout: what the command would wait, were it to wait for the timeout at all.
TIMEOUT = "5"


@pytest.fixture(scope="module")
def two(workers: WorkerFactory) -> Iterator[list[WorkerProcess]]:
    pair = [workers.start(MODEL="sleep:10ms"), workers.start(MODEL="sleep:10ms")]
    yield pair
    for worker in pair:
        worker.kill(signal.SIGCONT)  # in case a test stopped it


def test_with_no_worker_it_says_what_it_waits_for(
    workers: WorkerFactory, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the module's workers start (the fixture emptied the database)."""
    code, out, err = run_cli(capsys, redis_url, "status", "--json", "--timeout", "0.2")
    assert code == 0 and json.loads(out)["workers"] == {}
    assert "no worker has a fresh heartbeat: waiting 0.2s for any to answer" in err


def test_status_answers_within_a_second_with_two_workers(
    two: list[WorkerProcess], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(capsys, redis_url, "status", "--json")  # imports, first connection
    started = time.monotonic()
    code, out, err = run_cli(capsys, redis_url, "status", "--json", "--timeout", TIMEOUT)
    took = time.monotonic() - started
    assert code == 0, err
    state = json.loads(out)
    assert sorted(w["pid"] for w in state["workers"].values()) == sorted(w.pid for w in two)
    assert all(w["ready"] for w in state["workers"].values())
    assert err == ""  # nothing was waited for
    # Under 1 s on an idle machine (0.1-0.2 s here); the old wait was 2 x 5 s at least.
    assert took < 1.5, f"status took {took:.2f}s"


def test_a_silent_worker_is_waited_for_and_named(
    two: list[WorkerProcess], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stopped worker keeps its heartbeat fresh for DEAD_WORKER_TIMEOUT: status waits its
    timeout for it, and says so."""
    silent, other = two
    silent.kill(signal.SIGSTOP)
    try:
        code, out, err = run_cli(capsys, redis_url, "status", "--json", "--timeout", "0.5")
    finally:
        silent.kill(signal.SIGCONT)
    assert code == 0, err
    assert [w["pid"] for w in json.loads(out)["workers"].values()] == [other.pid]
    assert "1 of the 2 workers with a fresh heartbeat answered within 0.5s" in err

    def both() -> bool:
        _, again, _ = run_cli(capsys, redis_url, "status", "--json")
        return len(json.loads(again)["workers"]) == 2

    wait_for(both, 30, "the resumed worker to answer again")
