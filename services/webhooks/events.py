"""The completion events (core.keys.EVENTS_STREAM), read with the dispatchers' consumer group:
each event with a webhook becomes a delivery in the retry set, due at once, and is
acknowledged. Entries a dead dispatcher read but never moved are claimed after CLAIM_IDLE_MS."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from core.keys import EVENTS_STREAM, WEBHOOK_RETRIES
from core.lifecycle import WEBHOOK_CONSUMER_GROUP
from core.text import text
from services.webhooks.deliveries import Delivery

log = logging.getLogger("imgqueue.webhooks")

READ_COUNT = 2000  # stream entries per read: a burst of events moves in few round trips
CLAIM_IDLE_MS = 30_000  # a stream entry read this long ago and never acknowledged is claimed
FORGET_CONSUMER_IDLE_MS = 3_600_000  # consumers silent this long, holding nothing, are removed
FORGET_EVERY = 60.0  # seconds between looks for such consumers


class Events:
    """One dispatcher's side of the consumer group (`consumer`: its name, `<host>:<pid>`)."""

    def __init__(self, store: Any, prefix: str, consumer: str) -> None:
        self.store = store
        self.consumer = consumer
        self.stream = prefix + EVENTS_STREAM
        self.retries = prefix + WEBHOOK_RETRIES
        self._next_forget = 0.0

    def ensure_group(self) -> None:
        """The consumer group, created at the stream's start: events written before the first
        dispatcher ran are delivered too (MKSTREAM: the stream may not exist yet)."""
        try:
            self.store.xgroup_create(self.stream, WEBHOOK_CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, block: float | None) -> None:
        """New events (at most READ_COUNT), waiting up to `block` seconds (None: not at all)."""
        options = {} if block is None else {"block": max(int(block * 1000), 1)}
        reply = self.store.xreadgroup(
            WEBHOOK_CONSUMER_GROUP,
            self.consumer,
            {self.stream: ">"},
            count=READ_COUNT,
            **options,
        )
        for _stream, entries in _stream_entries(reply):
            self.take(entries)

    def take(self, entries: Sequence[tuple[Any, Any]]) -> None:
        """Each entry's delivery, if it asks for one, into the retry set due now; then every
        entry acknowledged. The first attempt's member is the same whoever moves the entry,
        so one moved twice (a dispatcher died in between) is one delivery (ZADD NX)."""
        if not entries:
            return
        due: dict[str, float] = {}
        now = time.time()
        for _id, fields in entries:
            delivery = Delivery.from_event(fields)
            if delivery is not None:
                due[delivery.member()] = now
        if due:
            self.store.zadd(self.retries, due, nx=True)
        self.store.xack(self.stream, WEBHOOK_CONSUMER_GROUP, *[i for i, _ in entries])

    def claim_stale(self) -> None:
        """Entries that dead dispatchers read and never moved (XAUTOCLAIM), and, now and then,
        the consumers they leave behind."""
        start: Any = "0-0"
        for _ in range(20):  # at most 2,000 entries a pass; the rest at the next
            reply = self.store.xautoclaim(
                self.stream,
                WEBHOOK_CONSUMER_GROUP,
                self.consumer,
                CLAIM_IDLE_MS,
                start_id=start,
                count=100,
            )
            start, claimed = reply[0], [(i, f) for i, f in reply[1] if f is not None]
            if claimed:
                log.info("claimed %d event(s) a stopped dispatcher had read", len(claimed))
                self.take(claimed)
            if text(start) == "0-0":
                break
        if time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + FORGET_EVERY
            self.forget_consumers()

    def forget_consumers(self) -> None:
        """Remove the group's consumers silent past FORGET_CONSUMER_IDLE_MS holding nothing."""
        for info in self.store.xinfo_consumers(self.stream, WEBHOOK_CONSUMER_GROUP):
            name = text(info.get("name") or "")
            idle = int(info.get("idle") or 0)
            forget = idle > FORGET_CONSUMER_IDLE_MS and not info.get("pending")
            if forget and name != self.consumer:
                self.store.xgroup_delconsumer(self.stream, WEBHOOK_CONSUMER_GROUP, name)


def _stream_entries(reply: Any) -> list[tuple[Any, list[tuple[Any, Any]]]]:
    """XREADGROUP's reply as (stream, entries) pairs, from RESP2 (a list) or RESP3 (a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(stream, entries) for stream, entries in reply]
