"""Faults without a worker process: the producer's clear error when its redis-server goes down
and stays down (tests/system/test_faults.py kills real workers)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from core.errors import BrokerUnavailable
from producer import Client
from tests.support.redis_server import RedisServer


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
