"""Deadlines without Redis or a worker: given and parsed, and the batcher never waiting past a
job's deadline (in this process). Cancels: tests/integration and tests/system test_cancel.py."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import pytest
import torch

from cli.common import parse_deadline
from producer.cancel import deadline_at
from worker import cancels
from worker.batcher import Batcher


def test_deadlines_given_and_parsed() -> None:
    assert deadline_at(None) is None
    assert deadline_at(30, now=1000.0) == 1030.0
    assert deadline_at(datetime(2100, 1, 2, tzinfo=UTC)) == 4102531200.0
    for bad in (0, -1, float("nan"), True, "30"):
        with pytest.raises(ValueError):
            deadline_at(bad)  # type: ignore[arg-type]
    assert parse_deadline("2.5") == 2.5
    assert parse_deadline("2100-01-02T00:00:00Z") == datetime(2100, 1, 2, tzinfo=UTC)
    for bad_text in ("0", "soon", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_deadline(bad_text)
    assert cancels.expired(None) is None and cancels.expired(100.0, now=99.0) is None
    assert isinstance(cancels.expired(100.0, now=100.5), Exception)


def test_a_batch_never_waits_past_a_jobs_deadline() -> None:
    batcher = Batcher(lambda batch: batch.flatten(1), max_batch_size=8, max_delay=30.0)
    try:
        with batcher.upcoming():  # a partner "on its way" would hold the batch 30 s
            t0 = time.monotonic()
            future = batcher.submit(torch.zeros(1), deadline=time.monotonic() + 0.1)
            assert future.result(timeout=10)[1] == 1
            assert time.monotonic() - t0 < 5
    finally:
        batcher.stop()
