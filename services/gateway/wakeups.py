"""Wake-ups for `GET /v1/jobs/{id}?wait=N`: one pub/sub connection per gateway process.

A worker PUBLISHes a job's final state on its result key's channel when someone subscribes
there (worker/backend.py). Each waiting request registers an `asyncio.Event` for its job's
channel; one task subscribes to the channels waited on, on one connection, and sets the events
as states arrive. So a thousand waiting clients cost one connection and no thread, and a job's
end is seen at once. A waiter still re-reads the state now and then (a message can be missed
while subscribing or reconnecting), and where there is no pub/sub (a Redis Cluster or a
sentinel:// result store) it only does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio

from core.connections import ResultStoreConfig
from core.text import text

log = logging.getLogger("imgqueue.gateway")

_READ_S = 0.05  # how long one read waits, so new subscriptions are made promptly
_RETRY_S = 1.0  # after a lost connection


class Wakeups:
    def __init__(self, config: ResultStoreConfig) -> None:
        self._redis: Any = None
        if not (config.cluster or config.sentinel):  # pub/sub of a single Redis only
            self._redis = redis.asyncio.Redis.from_url(config.url, socket_connect_timeout=5)
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """An event set when something is published on `channel`, while in the block."""
        event = asyncio.Event()
        if self._redis is None:
            yield event
            return
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="imgqueue-wakeups")
        self._waiters.setdefault(channel, set()).add(event)
        self._changed.set()
        try:
            yield event
        finally:
            waiting = self._waiters.get(channel, set())
            waiting.discard(event)
            if not waiting:
                self._waiters.pop(channel, None)
            self._changed.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("result wake-ups lost their connection (%s); waiters poll", exc)
                await asyncio.sleep(_RETRY_S)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        subscribed: set[str] = set()
        while True:
            if not self._waiters and not subscribed:
                await self._changed.wait()  # idle: no reads until someone waits
            self._changed.clear()
            wanted = set(self._waiters)
            if wanted - subscribed:
                await pubsub.subscribe(*(wanted - subscribed))
            if subscribed - wanted:
                await pubsub.unsubscribe(*(subscribed - wanted))
            subscribed = wanted
            if not subscribed:
                continue
            message = await pubsub.get_message(timeout=_READ_S)
            if message is not None and message.get("type") == "message":
                channel = message["channel"]
                name = text(channel)
                for event in self._waiters.get(name, ()):
                    event.set()
