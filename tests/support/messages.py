"""Where the broker's messages are: held by a consumer, or waiting in a queue; and a message's
headers."""

from __future__ import annotations

import json
from typing import Any

import redis


def held_messages(client: redis.Redis, prefix: str = "") -> list[Any]:
    """Every message some consumer holds: popped into an inbox, or claimed and unacknowledged."""
    out: list[Any] = []
    for key in client.scan_iter(f"{prefix}imgqueue:inbox:*"):
        out.extend(client.lrange(key, 0, -1))
    for key in client.scan_iter(f"{prefix}imgqueue:unacked:*"):
        out.extend(client.hvals(key))
    return out


def queued_messages(client: redis.Redis, queues: list[str], prefix: str = "") -> list[Any]:
    """Every message waiting in the queues' lists, every priority."""
    from core.contract import PRIORITY_STEPS, queue_list

    out: list[Any] = []
    for queue in queues:
        for priority in PRIORITY_STEPS:
            out.extend(client.lrange(prefix + queue_list(queue, priority), 0, -1))
    return out


def headers_of(raw: bytes) -> dict[str, Any]:
    """A queued message's headers (the Celery envelope's)."""
    headers: dict[str, Any] = json.loads(raw)["headers"]
    return headers
