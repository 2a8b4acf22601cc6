"""Bulk messages (`classify_many`) without a worker: one message carries many images, each
with its own task id (tests/system/test_bulk.py runs them through real workers)."""

from __future__ import annotations

import json
import uuid

import redis

from core.contract import BULK_TASK_NAME, TASK_NAME
from producer import Client


def test_one_message_carries_many_images(redis_url: str) -> None:
    queue = f"bulk-count-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    r = redis.Redis.from_url(redis_url)
    try:
        with Client(redis_url, queue=queue, bulk_size=4) as c:
            ids = c.submit_many([f"img{i}.jpg" for i in range(10)])
            assert len(ids) == 10 and r.llen(queue) == 3  # 4 + 4 + 2
            body = json.loads(r.lindex(queue, 0) or b"{}")
            assert body["headers"]["task"] == BULK_TASK_NAME
            c.submit_many(["a.jpg", "b.jpg"], bulk_size=1, priority=3)
            assert r.llen(f"{queue}\x06\x163") == 2
            last = json.loads(r.lindex(f"{queue}\x06\x163", 0) or b"{}")
            assert last["headers"]["task"] == TASK_NAME
    finally:
        r.delete(queue, f"{queue}\x06\x163")
        r.close()
