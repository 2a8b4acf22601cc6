"""Heartbeats, and the sweep that returns dead consumers' messages to their queues.

Every consuming channel has a consumer id and a thread that, every `dead_after / 5` seconds:
1. beats: its id's score in `imgqueue:consumers` becomes Redis's clock (one Lua call), and
   its inboxes are (re-)registered, so a sweep can always find them;
2. returns its own inboxes to their queues: a popped message whose reply was lost with a
   connection would otherwise sit there while this process lives. A fetch in flight may lose
   its message to this; the channel's claim then finds it gone and skips it, and the message
   is fetched again from the head of its queue;
3. sweeps, at most once per period across all workers (a lock in Redis): every consumer whose
   beat is older than `dead_after` is dead, and its inboxes and unacknowledged messages go back
   to the head of their queues; a live consumer's message older than the visibility timeout
   (a hung job) goes back too.

A thread, not the event loop: the solo pool runs jobs on the loop, and a long job must not
look like a dead worker.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import redis

from core.keys import Keys
from core.text import text
from worker.broker import scripts

log = logging.getLogger(__name__)


class Liveness:
    """The heartbeat thread of one channel (see module doc)."""

    def __init__(
        self,
        channel: Any,
        client: redis.Redis,
        keys: Keys,
        dead_after: float,
        visibility_timeout: float,
        on_event: Callable[[str, int], None] | None = None,
    ) -> None:
        self._channel = weakref.ref(channel)
        self.client = client
        self.keys = keys
        self.dead_after = dead_after
        self.interval = max(0.2, dead_after / 5)
        self.visibility_timeout = visibility_timeout
        self.on_event = on_event
        self.inboxes: dict[str, str] = {}  # inbox key -> queue list key
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._beat = client.register_script(scripts.BEAT)
        self._sweep = client.register_script(scripts.SWEEP)
        self._reconcile = client.register_script(scripts.RECONCILE)

    def register(self, inboxes: dict[str, str]) -> None:
        """Before the first fetch from new lists: beat now, so their inboxes are known."""
        with self._lock:
            self.inboxes.update(inboxes)
        self.beat()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"imgqueue-heartbeat-{self.keys.cid}", daemon=True
            )
            self._thread.start()

    def beat(self) -> None:
        with self._lock:
            pairs = [x for item in self.inboxes.items() for x in item]
        keys = [self.keys.consumers, self.keys.inboxes]
        known = self._beat(keys=keys, args=[self.keys.cid, *pairs])
        if not known and self._thread is not None:
            log.warning(
                "consumer %s was declared dead (no heartbeat for %.0fs, e.g. a long pause) and "
                "its messages returned to their queues; it carries on under the same id",
                self.keys.cid,
                self.dead_after,
            )
            self._emit("declared_dead", 1)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            channel = self._channel()
            if channel is None or channel.closed or channel.connection is None:
                return
            try:
                self.beat()
                self._return_own_inboxes()
                self.sweep()
                if self._failing:
                    log.info("heartbeat of %s restored", self.keys.cid)
                    self._failing = False
            except redis.RedisError as exc:
                if not self._failing:
                    log.warning("heartbeat of %s failed, retrying: %s", self.keys.cid, exc)
                    self._failing = True
            except Exception:  # never let the thread die quietly
                log.exception("heartbeat of %s failed", self.keys.cid)
            del channel

    def _return_own_inboxes(self) -> None:
        moved = int(self._reconcile(keys=[self.keys.inboxes]) or 0)
        if moved:
            log.warning(
                "returned %d message(s) from this consumer's inbox to their queues (a fetch "
                "reply was lost)",
                moved,
            )
            self._emit("returned_lost_reply", moved)

    def sweep(self) -> None:
        """Return dead consumers' messages, and overdue ones (at most once per period)."""
        lock_ms = int(self.interval * 1000)
        out = self._sweep(
            keys=[self.keys.consumers, self.keys.sweep_lock],
            args=[*self.keys.consumer_prefixes, self.dead_after, self.visibility_timeout, lock_ms],
        )
        if not out:
            return
        expired, dead = int(out[0]), out[1:]
        for cid, moved in zip(dead[::2], dead[1::2], strict=True):
            name = text(cid)
            log.warning(
                "consumer %s is dead (no heartbeat for %.0fs): returned %d message(s) to the "
                "head of their queues",
                name,
                self.dead_after,
                int(moved),
            )
            self._emit("returned_dead_consumer", int(moved))
        if expired:
            log.warning(
                "returned %d message(s) unacknowledged for over VISIBILITY_TIMEOUT=%.0fs",
                expired,
                self.visibility_timeout,
            )
            self._emit("returned_visibility_timeout", expired)

    def _emit(self, event: str, count: int) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, count)
            except Exception:
                log.exception("broker event hook failed")
