"""The dispatcher's loop: moves events into the retry set and delivers what is due, until `stop`.

The loop thread does the Redis work in batches: events read READ_COUNT at a time
(services/webhooks/events.py), due deliveries leased with their jobs' results read ahead in one
MGET, and what became of finished ones written in one call (services/webhooks/retries.py).
WEBHOOK_CONCURRENCY threads only make attempts (services/webhooks/attempts.py). Up to twice
that many deliveries are leased at once, so a thread that finishes takes the next at once, and
the loop is woken when half of them are left rather than waiting out a read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import redis

from core.connections import mget, result_store_errors
from core.keys import result_key
from core.redaction import redact_error
from services.webhooks import payloads
from services.webhooks.attempts import Deliverer
from services.webhooks.deliveries import Delivery, Outcome
from services.webhooks.events import Events
from services.webhooks.metrics import Backlog, Metrics, read_backlog
from services.webhooks.retries import RetrySet
from services.webhooks.settings import WebhookSettings
from services.webhooks.signing import service_keys
from services.webhooks.sweeper import Sweeper

log = logging.getLogger("imgqueue.webhooks")

CLAIM_EVERY = 5.0  # seconds between looks for stale entries (and outbox sweeps)
FLUSH_COUNT = 1000  # outcomes written per call
MAX_BLOCK = 0.5  # longest wait for new events, so due retries and a SIGTERM are seen soon
LEASE_MARGIN = 30.0  # a leased delivery is due again after twice WEBHOOK_TIMEOUT plus this

# What the result store raises while down, failing over or refusing (OOM, a read-only
# replica): the loop waits and goes on.
STORE_ERRORS: tuple[type[BaseException], ...] = (*result_store_errors(), redis.RedisError)


class Dispatcher:
    """Moves events to the retry set and delivers what is due; `run` until `stop` is set."""

    def __init__(self, settings: WebhookSettings, store: Any, consumer: str) -> None:
        keys = service_keys(settings)  # before anything starts: no secret, no dispatcher
        self.settings = settings
        self.store = store
        self.consumer = consumer
        self.prefix = settings.redis_key_prefix
        self.timeout = settings.webhook_timeout
        self.concurrency = settings.webhook_concurrency
        # Leased at once: every thread busy and as many waiting to start, so a thread that
        # finishes starts the next while the loop leases more.
        self.capacity = 2 * self.concurrency
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.events = Events(store, self.prefix, consumer)
        self.stream = self.events.stream
        self.retries = RetrySet(store, self.prefix, settings.dead_letter_limit)
        self.deliverer = Deliverer(settings, store, keys, self.metrics)
        self.sweeper = Sweeper(
            store, self.prefix, settings.events_maxlen, settings.events_sweep_after
        )
        self.metrics.registry.register(Backlog(self.backlog))
        self.last_turn = time.monotonic()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")
        self._outstanding = 0  # leased and not yet finished: running or waiting for a thread
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when half the leased work is left
        self._done: deque[Outcome] = deque()  # appended by the threads, written by the loop
        self._next_claim = 0.0

    def run(self) -> None:
        failures = 0
        grouped = False
        try:
            while not self.stop.is_set():
                try:
                    if not grouped:
                        self.events.ensure_group()
                        grouped = True
                    self.turn()
                    failures = 0
                except redis.ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream went (FLUSHDB, a new Redis)
                        grouped = False
                        continue
                    failures = self._pause(failures, exc)  # OOM, a read-only replica ...
                except STORE_ERRORS as exc:
                    failures = self._pause(failures, exc)
        finally:
            # In-flight attempts end within WEBHOOK_TIMEOUT; those not started are given back.
            self._pool.shutdown(wait=True)
            try:
                self.flush()
            except STORE_ERRORS as exc:
                log.warning(
                    "cannot record %d delivery outcome(s) (%s): they are made again after their "
                    "lease",
                    len(self._done),
                    redact_error(exc),
                )
            self.deliverer.close()

    def _pause(self, failures: int, exc: BaseException) -> int:
        wait = min(0.5 * 2 ** min(failures, 5), 10.0)
        log.warning("result store error (%s); again in %.1f s", redact_error(exc), wait)
        self.stop.wait(wait)
        return failures + 1

    def turn(self) -> None:
        """One pass: write what finished, now and then claim stale entries and sweep, start
        due deliveries, read events (waiting for them only while threads are free)."""
        self.last_turn = now = time.monotonic()
        self._wake.clear()
        self.flush()
        if now >= self._next_claim:
            self.events.claim_stale()
            self.sweeper.sweep()
            self.deliverer.sender.prune()
            self._next_claim = now + CLAIM_EVERY
        room = self.capacity - self.outstanding()
        wait = MAX_BLOCK
        saturated = room <= 0
        if not saturated:
            started, wait = self.start_due(room)
            saturated = started >= room  # more may be due
        if saturated:
            self.events.read(None)  # take new events in, without waiting: every slot is taken
            self._wake.wait(MAX_BLOCK)  # until half the leased work is done
        else:
            self.events.read(wait)

    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding

    def start_due(self, room: int) -> tuple[int, float]:
        """Lease up to `room` due deliveries, read their results in one MGET and start them.
        Returns how many, and the seconds until the next is due (at most MAX_BLOCK)."""
        now = time.time()
        due, first = self.retries.lease(now, now + 2 * self.timeout + LEASE_MARGIN, room)
        if not due:
            wait = MAX_BLOCK if first is None else max(first - time.time(), 0.0)
            return 0, min(wait, MAX_BLOCK)
        leased: list[tuple[Any, Delivery]] = []
        for member in due:
            try:
                leased.append((member, Delivery.from_member(member)))
            except (ValueError, TypeError, AttributeError):
                log.error("dropped a retry set member that is not a delivery: %.200r", member)
                self._done.append(Outcome(member))
        # First attempts of jobs need their results: read ahead, all in one call.
        firsts = [(m, d) for m, d in leased if d.body is None and d.kind == "job"]
        raws = mget(self.store, [result_key(d.id, self.prefix) for _, d in firsts])
        ahead = {m: raw for (m, _), raw in zip(firsts, raws, strict=True)}
        with self._lock:
            self._outstanding += len(leased)
        for member, delivery in leased:
            raw = ahead.get(member, payloads.UNREAD)
            self._pool.submit(self._deliver_safely, member, delivery, raw)
        return len(due), 0.0

    def flush(self) -> None:
        """Write what became of finished deliveries: dead letters first, then the retry set
        (removed, or rescheduled), in one call each."""
        while self._done:
            batch: list[Outcome] = []
            while self._done and len(batch) < FLUSH_COUNT:
                batch.append(self._done.popleft())
            dead = [o.dead for o in batch if o.dead]
            try:
                if dead:
                    self.retries.bury(dead)
                    batch = [replace(o, dead="") for o in batch]
                self.retries.settle(batch)
            except BaseException:
                self._done.extendleft(reversed(batch))  # written at the next turn
                raise

    def backlog(self) -> tuple[dict[str, int], float] | None:
        """The backlog of every dispatcher (metrics.read_backlog); None while the result
        store cannot tell."""
        try:
            return read_backlog(self.store, self.stream, self.retries.key)
        except STORE_ERRORS as exc:  # the scrape goes on without it
            log.debug("backlog unreadable: %s", redact_error(exc))
            return None

    def _deliver_safely(self, member: Any, delivery: Delivery, raw: Any) -> None:
        try:
            if self.stop.is_set():
                # Leased but not started when SIGTERM came: due again at once, for any one.
                self._done.append(Outcome(member, member, time.time()))
                return
            self.metrics.in_flight.inc()
            try:
                self._done.append(self.deliverer.deliver(member, delivery, raw))
            finally:
                self.metrics.in_flight.dec()
        except Exception:  # a store error: the lease runs out and it is tried again
            log.exception("webhook delivery interrupted; it is tried again after its lease")
        finally:
            with self._lock:
                self._outstanding -= 1
                if self._outstanding <= self.concurrency:
                    self._wake.set()
