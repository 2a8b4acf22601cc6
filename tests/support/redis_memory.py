"""The Redis-memory tests' own redis-server, with a maxmemory (noeviction), and worker-shaped
results to fill it with.

The fixtures `server` (module-scoped) and `r` (its client, the database emptied before and after
each test) are defined here under those names; a test module imports `server_fixture` and
`r_fixture` (never called directly) to use them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.redis_server import RedisServer

MAXMEMORY = 64 << 20


# What a worker stores for a top-5 `classify` result (the shape, not real numbers).
RESULT: dict[str, Any] = {
    "status": "SUCCESS",
    "result": {
        "source": "https://images.example.com/photos/2026/cat-on-a-mat.jpg",
        "model": "resnet50",
        "weights": "IMAGENET1K_V2",
        "device": "cuda:0",
        "precision": "fp16",
        "pretrained": True,
        "cached": False,
        "predictions": [
            {"label": f"label number {i}", "index": 100 + i, "probability": 0.123456789}
            for i in range(5)
        ],
        "timings_ms": {"fetch": 3.1, "preprocess": 12.4, "inference": 61.0, "total": 76.6},
    },
    "traceback": None,
    "children": [],
    "date_done": "2026-11-27T21:02:11.812345+00:00",
    "task_id": "9b1d0000-0000-0000-0000-000000000000",
}


@pytest.fixture(name="server", scope="module")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(
        tmp_path_factory.mktemp("memory"),
        extra=["--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"],
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(name="r")
def r_fixture(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def store_results(r: redis.Redis, n: int) -> None:
    for _ in range(n):
        task_id = str(uuid.uuid4())
        r.set(f"celery-task-meta-{task_id}", json.dumps({**RESULT, "task_id": task_id}))
