"""One reader of the completion events stream per gateway process, shared by every SSE client.

GET /v1/events (routes/events.py) must cost neither a thread nor a blocking Redis read
per connected client. So one task per process follows the stream (`XREAD BLOCK` of at most a
second, in a worker thread, on the Client's result-store connections) and hands each entry to
the subscriptions of its tenant, in memory. The task runs while subscriptions exist and stops
after the last one ends.

A subscription that starts from an earlier entry (Last-Event-ID) first reads what it missed
with short `XRANGE`s, up to the hub's position taken in the same loop step as it registered:
from then on the hub hands it everything after that position, so nothing falls between the
two. One that cannot keep up (its buffer full) stops taking entries and reads them back the
same way. Every entry is passed on once, in stream order: one at or before the position a
subscription has reached is skipped (another gateway's hub may lag behind the id a client
resumes from).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi.concurrency import run_in_threadpool

from core.connections import block_budget, result_store_errors
from core.keys import EVENTS_STREAM
from core.text import text
from producer.client import Client
from producer.events import Event

log = logging.getLogger("imgqueue.gateway")

BLOCK_S = 1.0  # the longest one XREAD holds a worker thread
PAGE = 500  # entries per read
BUFFER = 10_000  # events a subscription holds before it drops and reads them back
RETRY_S = 1.0  # after Redis failed the hub's read
READY_S = 5.0  # how long a new subscription waits for the hub's first position
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, *result_store_errors())


class Unavailable(Exception):
    """The events stream could not be read within READY_S: no subscription was made."""


def parse_id(text: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`, or `<ms>`) as numbers; ValueError if it is none."""
    ms, _, seq = text.partition("-")
    if not ms.isdigit() or not (seq.isdigit() or seq == ""):
        raise ValueError(f"not a stream entry id: {text!r}")
    return int(ms), int(seq or 0)


class Subscription:
    """The events of one tenant after `position`, in order (`batches`)."""

    def __init__(self, hub: EventHub, tenant: str, position: str) -> None:
        self.hub = hub
        self.tenant = tenant
        self.position = position  # the last entry id passed on (or skipped as another's)
        self._queue: deque[Event] = deque()
        self._woken = asyncio.Event()
        self._dropped = False
        self._behind: str | None = None  # read (position, behind] from Redis first

    def offer(self, event: Event) -> None:
        """Called by the hub, on the event loop, for each entry of this tenant."""
        if self._dropped:
            return
        if len(self._queue) >= BUFFER:
            self._dropped = True  # read back from Redis once the buffer is drained
        else:
            self._queue.append(event)
        self._woken.set()

    def catch_up(self) -> None:
        """Read from Redis what lies between `position` and what the hub hands on next."""
        if parse_id(self.position) < parse_id(self.hub.position):
            self._behind = self.hub.position
        self._dropped = False

    async def batches(self, idle_s: float) -> AsyncIterator[list[Event]]:
        """Events as they come, a batch at a time; an empty batch after `idle_s` seconds
        without any (time for a keep-alive). Raises what Redis raises while catching up."""
        while True:
            if self._behind is not None:
                page = await run_in_threadpool(self._read_page, self._behind)
                if page:
                    yield page
                continue
            if not self._queue:
                self._woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), idle_s)
            fresh = self._take()
            if self._dropped:
                self.catch_up()  # in this step: the hub hands on only what follows
            if fresh or self._behind is None:
                yield fresh

    def _take(self) -> list[Event]:
        out, after = [], parse_id(self.position)
        while self._queue:
            event = self._queue.popleft()
            if parse_id(event.entry_id) > after:
                out.append(event)
                after = parse_id(event.entry_id)
                self.position = event.entry_id
        return out

    def _read_page(self, upto: str) -> list[Event]:
        """One XRANGE of what this subscription missed (in a worker thread)."""
        raw = self.hub.results.xrange(
            self.hub.stream, min=f"({self.position}", max=upto, count=PAGE
        )
        if len(raw) < PAGE:
            self.position, self._behind = upto, None  # the rest comes from the hub
        else:
            self.position = text(raw[-1][0])
        events = (Event.parse(entry_id, fields) for entry_id, fields in raw)
        return [event for event in events if event.tenant == self.tenant]


class EventHub:
    """Follows the events stream for every subscription of this process."""

    def __init__(self, client: Client) -> None:
        self.results: Any = client.results
        self.stream = client.result_config.key_prefix + EVENTS_STREAM
        self.position = "0-0"  # the last entry handed on
        self._subs: dict[str, set[Subscription]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriptions(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, tenant: str, since: str) -> AsyncIterator[Subscription]:
        """A subscription to `tenant`'s events after `since` (an entry id, "0", or "$": from
        the hub's position). Raises Unavailable when the stream cannot be read at all."""
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name="imgqueue-event-hub")
        subscription = Subscription(self, tenant, "0-0")
        self._subs.setdefault(tenant, set()).add(subscription)
        try:
            try:
                await asyncio.wait_for(self._ready.wait(), READY_S)
            except TimeoutError:
                raise Unavailable from None
            # From here to catch_up, no await: the hub's position is this step's.
            subscription.position = self.position if since == "$" else since
            subscription.catch_up()
            yield subscription
        finally:
            subs = self._subs.get(tenant, set())
            subs.discard(subscription)
            if not subs:
                self._subs.pop(tenant, None)

    async def idle(self) -> None:
        """Until the reader has stopped, as it does once no subscription is left."""
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        block_ms = int(block_budget(self.results, BLOCK_S) * 1000)
        while self._subs:
            try:
                if not self._ready.is_set():
                    self.position = await run_in_threadpool(self._last_id)
                    self._ready.set()
                reply = await run_in_threadpool(self._read, block_ms)
            except REDIS_ERRORS as exc:
                if self._subs:  # else the gateway is closing its connections
                    log.warning("cannot read the events stream (%s); trying again", exc)
                    await asyncio.sleep(RETRY_S)
                continue
            except Exception:  # a bug: say so, and keep the open streams alive
                log.exception("the events stream reader failed; trying again")
                await asyncio.sleep(RETRY_S)
                continue
            for entry_id, fields in reply:
                event = Event.parse(entry_id, fields)
                self.position = event.entry_id
                for subscription in self._subs.get(event.tenant, ()) if event.tenant else ():
                    subscription.offer(event)

    def _last_id(self) -> str:
        newest = self.results.xrevrange(self.stream, count=1)
        return text(newest[0][0]) if newest else "0-0"

    def _read(self, block_ms: int) -> list[tuple[Any, dict[Any, Any]]]:
        reply = self.results.xread({self.stream: self.position}, count=PAGE, block=block_ms)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [e for entries in reply.values() for e in (entries[0] if entries else [])]
        return [entry for _, entries in reply for entry in entries]
