"""`python -m services.webhooks`: POSTs each finished job's result to its webhook, signed.

The dispatcher follows the completion events (core.lifecycle.EVENTS_STREAM, on the result
store) with the consumer group WEBHOOK_CONSUMER_GROUP, so workers never wait for a receiver:
a job's result and the next batch never depend on it. Any number of dispatchers may run; each
reads as `<host>:<pid>`.

An event with a webhook becomes a delivery in the retry set (WEBHOOK_RETRIES, a sorted set
scored by when each is due; its first attempt is due at once), and its stream entry is
acknowledged. A dispatcher leases due deliveries (their score moves past the lease, so a
dispatcher that dies mid-attempt only delays them), up to twice WEBHOOK_CONCURRENCY at once,
and POSTs them from a pool of WEBHOOK_CONCURRENCY threads over kept-alive connections
(services/webhooks/http.py). Its loop does the Redis work in batches (events read 2,000 at a time,
the leased deliveries' results in one MGET, what became of finished ones in one call) and is
woken as soon as half the leased work is done, so a thread that finishes starts the next
delivery at once (about 1,800 deliveries/s to a receiver that answers at once, measured by
`python -m bench.webhooks`: docs/performance.md):

- the body is the job's result as `imgqueue result` prints it (read from the result store at
  the first attempt and kept, byte for byte, for every retry), or a group's summary;
- headers `webhook-id` (the same for every attempt of one delivery), `webhook-timestamp` and
  `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per
  WEBHOOK_SECRET key), as Standard Webhooks specifies. An event with a `tenant` is signed with
  that tenant's own `webhook_secret` instead (core.tenants, read at most every TENANT_TTL
  seconds); one whose tenant no longer exists is dead-lettered (`tenant`), never signed with
  another secret;
- 2xx: delivered. Anything else, a connection error or no answer within WEBHOOK_TIMEOUT: tried
  again after WEBHOOK_RETRY_BACKOFF seconds, doubling (plus up to 10%), at most an hour, until
  WEBHOOK_MAX_ATTEMPTS; then dead-lettered (WEBHOOK_DEAD_LETTERS, newest first, capped at
  DEAD_LETTER_LIMIT; `imgqueue status` shows them) with one log line.
- the URL obeys the fetch policy (worker.fetch: public addresses only unless
  FETCH_ALLOW_NETWORKS, resolved once and connected to exactly the vetted address, TLS checked
  for the host name). A refused one is dead-lettered at once, never connected to. Redirects
  are not followed: a 3xx is a failed attempt.

Entries a dead dispatcher read but never moved are claimed after CLAIM_IDLE_MS (XAUTOCLAIM).
On a Redis Cluster result store the dispatcher also sweeps the events' outbox (worker/outbox.py):
the events of results whose worker died before announcing them are appended, so their webhooks
are not lost. SIGTERM stops reading and leasing, lets the attempts in flight end (at most
WEBHOOK_TIMEOUT), gives back those leased but not started (due at once), and exits 0. With
METRICS_PORT set: /metrics (the backlog and its age among them) and /healthz (see
docs/lifecycle.md). Celery and torch are never imported.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from core import tenants
from core.connections import mget, result_store_errors
from core.contract import result_key
from core.lifecycle import (
    EVENT_FIELDS,
    EVENTS_STREAM,
    WEBHOOK_CONSUMER_GROUP,
    WEBHOOK_DEAD_LETTERS,
    WEBHOOK_RETRIES,
)
from core.redaction import display_url, redact_text
from core.webhooks import InvalidWebhook, check_webhook
from producer import groups
from services.webhooks.http import Sender
from worker import urls
from worker.errors import ConfigError, InvalidArguments, SourceNotAllowed
from worker.outbox import Sweeper
from worker.settings import Settings, webhook_keys

log = logging.getLogger("imgqueue.webhooks")

USER_AGENT = "imgqueue-webhooks/0.1"
MAX_RETRY_DELAY = 3600.0  # seconds; the doubling stops here
JITTER = 0.1  # each retry delay is stretched by up to this fraction, so retries spread out
CLAIM_IDLE_MS = 30_000  # a stream entry read this long ago and never acknowledged is claimed
CLAIM_EVERY = 5.0  # seconds between looks for such entries
FORGET_CONSUMER_IDLE_MS = 3_600_000  # consumers silent this long, holding nothing, are removed
READ_COUNT = 2000  # stream entries per read: a burst of events moves in few round trips
FLUSH_COUNT = 1000  # outcomes written per call
TENANT_TTL = 5.0  # seconds a tenant's webhook secret is kept; a changed one is used after this
MAX_BLOCK = 0.5  # longest wait for new events, so due retries and a SIGTERM are seen soon
LEASE_MARGIN = 30.0  # a leased delivery is due again after twice WEBHOOK_TIMEOUT plus this
STALL_AFTER = 60.0  # /healthz answers 503 when the loop has not turned for this long

# Due deliveries (at most ARGV[3]) move to ARGV[2] (the lease's end); also the earliest score.
_LEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, first[2] or ''}
"""
# Leased deliveries, each replaced by its next attempt (ARGV[i + 1] at ARGV[i + 2]) or removed
# (''), only while it is still there: another dispatcher may have taken it over after the
# lease ran out.
_REPLACE = """
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    if ARGV[i + 1] ~= '' then redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i + 1]) end
    n = n + 1
  end
end
return n
"""


# The event's fields a delivery holds on its own; the rest (a group's counters) are `extra`.
_NOT_EXTRA = frozenset({*EVENT_FIELDS, "tenant"})


def sign(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per key, space separated."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )


def retry_delay(failed: int, backoff: float, jitter: float = JITTER) -> float:
    """Seconds to wait after the `failed`-th failed attempt (1, 2, ...): WEBHOOK_RETRY_BACKOFF
    doubling, at most MAX_RETRY_DELAY, stretched by up to `jitter`."""
    base = min(backoff * 2.0 ** min(failed - 1, 30), MAX_RETRY_DELAY)
    return base * (1 + random.uniform(0, jitter))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


@dataclass(frozen=True)
class Delivery:
    """One webhook to deliver: a member of the retry set, as compact JSON."""

    kind: str  # "job" or "group"
    id: str  # the task id or the group id
    url: str
    state: str = ""
    error: str = ""
    queue: str = ""
    group: str = ""
    time: str = ""  # when the state was stored (the event's), epoch seconds
    tenant: str = ""  # signed with this tenant's webhook secret (core.tenants), if any
    attempts: int = 0  # made so far
    first_at: float = 0.0  # when the first attempt started
    body: str | None = None  # fixed at the first attempt, so every retry signs the same bytes
    status: int | None = None  # the last answer's HTTP status
    last_error: str = ""
    # The event's other fields: a group's counters (total, succeeded, failed, cancelled).
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def webhook_id(self) -> str:
        """Stable for the delivery: a receiver seeing it twice has it already."""
        return f"{self.kind}_{self.id}"

    @classmethod
    def from_event(cls, fields: dict[Any, Any] | None) -> Delivery | None:
        """The delivery an event entry asks for, or None (no webhook, or not an event)."""
        got = {_text(k): _text(v) for k, v in (fields or {}).items()}
        if not got.get("webhook") or not got.get("id"):
            return None
        return cls(
            kind=got.get("kind") or "job",
            id=got["id"],
            url=got["webhook"],
            state=got.get("state", ""),
            error=got.get("error", ""),
            queue=got.get("queue", ""),
            group=got.get("group", ""),
            time=got.get("time", ""),
            tenant=got.get("tenant", ""),
            extra=tuple(sorted((k, v) for k, v in got.items() if k not in _NOT_EXTRA)),
        )

    def member(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_member(cls, raw: bytes | str) -> Delivery:
        data = json.loads(raw)
        data["extra"] = tuple(tuple(pair) for pair in data.get("extra") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def job_payload(delivery: Delivery, raw: bytes | str | None) -> dict[str, Any]:
    """What a job's webhook receives: `imgqueue result`'s object (id, state, result or error)
    plus type, queue, group and time. An expired result leaves the event's state and error."""
    out: dict[str, Any] = {
        "type": "job",
        "id": delivery.id,
        "state": delivery.state,
        "queue": delivery.queue or None,
        "group": delivery.group or None,
        "time": _number(delivery.time),
    }
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:  # not a result this service wrote
        meta = None
    if not isinstance(meta, dict):
        if delivery.error:
            out["error"] = {"type": delivery.error, "message": ""}
        return out
    state = str(meta.get("status") or delivery.state)
    out["state"] = state
    result = meta.get("result")
    if state == "SUCCESS":
        out["result"] = result
    elif isinstance(result, dict):
        args = result.get("exc_message")
        message = " ".join(map(str, args)) if isinstance(args, list) else str(args or "")
        out["error"] = {"type": str(result.get("exc_type", state)), "message": message}
    else:
        out["error"] = {"type": delivery.error or state, "message": ""}
    return out


def group_payload(delivery: Delivery, summary: dict[str, Any] | None) -> dict[str, Any]:
    """What a group's webhook receives: the group's id, queue and counters from its event
    (total, succeeded, failed, cancelled), and the group's summary where one is read."""
    out: dict[str, Any] = {
        "type": "group",
        "id": delivery.id,
        "state": delivery.state or "DONE",
        "queue": delivery.queue or None,
        "time": _number(delivery.time),
    }
    for key, value in delivery.extra:
        number = _number(value)
        out[key] = int(number) if number is not None and number.is_integer() else value
    if summary:
        out.update({k: v for k, v in summary.items() if k not in ("type", "id", "webhook")})
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status: int | None = None
    error: str = ""
    refused: bool = False  # by the URL check or the SSRF policy: never tried again


@dataclass(frozen=True)
class Outcome:
    """What became of a leased delivery, for the loop to write (`Dispatcher.flush`): `new`
    replaces `member` in the retry set, due at `due` ("" removes it); `dead` is its dead
    letter (JSON), recorded first."""

    member: bytes | str
    new: bytes | str = ""
    due: float = 0.0
    dead: str = ""


_UNREAD: Any = object()  # a job's result not read ahead: the delivery reads it itself


class Metrics:
    """Prometheus metrics of this dispatcher (served only with METRICS_PORT)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = Counter(
            "imgqueue_webhook_attempts",
            "Webhook attempts by outcome: delivered, retry (failed, tried again), dead "
            "(failed for the last time), refused (SSRF policy or URL: never connected), "
            "tenant (its tenant no longer exists: never signed nor sent)",
            ["outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "imgqueue_webhook_attempt_seconds",
            "Time of one webhook attempt, connecting to the answer",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "imgqueue_webhook_in_flight", "Webhook attempts in progress", registry=self.registry
        )
        self.connections = Counter(
            "imgqueue_webhook_connections",
            "Connections made to receivers (kept alive between deliveries)",
            registry=self.registry,
        )


class Backlog:
    """The backlog gauges, read from the result store at each scrape: what every dispatcher
    has yet to do, not only this one."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def describe(self) -> list[Any]:
        return [self._count({}), self._age(0.0)]

    def collect(self) -> Iterator[Any]:
        try:
            counts, age = self.dispatcher.backlog()
        except _STORE_ERRORS as exc:  # the scrape goes on without them
            log.debug("backlog unreadable: %s", _short(exc))
            return
        yield self._count(counts)
        yield self._age(age)

    @staticmethod
    def _count(counts: dict[str, int]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "imgqueue_webhook_backlog",
            "Webhooks not yet delivered: `stream` events not yet moved to the retry set (unread,"
            " or read and not acknowledged), `due` deliveries due and not started, `later` in"
            " flight or waiting for a retry",
            labels=["where"],
        )
        for where, count in counts.items():
            family.add_metric([where], count)
        return family

    @staticmethod
    def _age(age: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "imgqueue_webhook_backlog_age_seconds",
            "How long the oldest waiting work has waited: an event not yet moved to the retry"
            " set, or a delivery due and not started (0: none)",
            value=age,
        )


class TenantKeys:
    """Each tenant's signing keys, from `imgqueue:tenants` on the broker's Redis
    (core.tenants), read at most every TENANT_TTL seconds per tenant."""

    def __init__(self, settings: Settings) -> None:
        self.config = settings.redis_config
        self._client: Any = None
        self._cache: dict[str, tuple[float, tuple[bytes, ...], str]] = {}
        self._lock = threading.Lock()

    def lookup(self, name: str) -> tuple[tuple[bytes, ...], str]:
        """(the tenant's keys, "") or ((), why none): no such tenant, or no usable secret."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and now - hit[0] < TENANT_TTL:
            return hit[1], hit[2]
        found = tenants.get_tenant(self.client(), self.config, name)
        keys: tuple[bytes, ...] = ()
        why = ""
        if found is None:
            why = f"tenant {name!r} no longer exists: not signed with any other secret"
        else:
            try:
                keys = webhook_keys(found.webhook_secret)
            except ConfigError:
                keys = ()
            if not keys:
                why = f"tenant {name!r} has no usable webhook secret"
        with self._lock:
            if len(self._cache) > 10_000:  # bounded, whatever names events carry
                self._cache.clear()
            self._cache[name] = (now, keys, why)
        return keys, why

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self.config.client(socket_connect_timeout=5, socket_timeout=10)
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Dispatcher:
    """Moves events to the retry set and delivers what is due; `run` until `stop` is set.

    The loop thread reads events, leases due deliveries (with their results, read ahead in
    one MGET) and writes what became of them, each in batches; WEBHOOK_CONCURRENCY threads
    only POST. It keeps up to twice that many leased, so a thread that finishes takes the
    next at once, and is woken when half of them are left rather than waiting out a read.
    """

    def __init__(self, settings: Settings, store: Any, consumer: str) -> None:
        self.settings = settings
        self.keys = webhook_keys(settings.webhook_secret)
        if not self.keys:
            raise ConfigError(
                "WEBHOOK_SECRET is unset: deliveries are signed with it (Standard Webhooks' "
                "whsec_<base64>, e.g. whsec_$(openssl rand -base64 32))"
            )
        self.store = store
        self.consumer = consumer
        prefix = settings.redis_key_prefix
        self.prefix = prefix
        self.stream = prefix + EVENTS_STREAM
        self.retries = prefix + WEBHOOK_RETRIES
        self.dead = prefix + WEBHOOK_DEAD_LETTERS
        self.timeout = settings.webhook_timeout
        self.concurrency = settings.webhook_concurrency
        # Leased at once: every thread busy and as many waiting to start, so a thread that
        # finishes starts the next while the loop leases more.
        self.capacity = 2 * self.concurrency
        # Connecting may take the whole attempt, never longer (a watchdog cuts the rest).
        self._connect_settings = replace(
            settings, fetch_connect_timeout=min(settings.fetch_connect_timeout, self.timeout)
        )
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.sender = Sender(self._connect_settings, self.concurrency, self.metrics.connections.inc)
        self.tenant_keys = TenantKeys(settings)
        self.sweeper = Sweeper(store, prefix, settings.events_maxlen, settings.events_sweep_after)
        self.metrics.registry.register(Backlog(self))
        self.last_turn = time.monotonic()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")
        self._outstanding = 0  # leased and not yet finished: running or waiting for a thread
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when half the leased work is left
        self._done: deque[Outcome] = deque()  # appended by the threads, written by the loop
        self._lease = store.register_script(_LEASE)
        self._replace = store.register_script(_REPLACE)
        self._next_claim = 0.0
        self._next_forget = 0.0

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        grouped = False
        try:
            while not self.stop.is_set():
                try:
                    if not grouped:
                        self.ensure_group()
                        grouped = True
                    self.turn()
                    failures = 0
                except redis.ResponseError as exc:
                    if "NOGROUP" in str(exc):  # the stream went (FLUSHDB, a new Redis)
                        grouped = False
                        continue
                    failures = self._pause(failures, exc)  # OOM, a read-only replica ...
                except _STORE_ERRORS as exc:
                    failures = self._pause(failures, exc)
        finally:
            # In-flight attempts end within WEBHOOK_TIMEOUT; those not started are given back.
            self._pool.shutdown(wait=True)
            try:
                self.flush()
            except _STORE_ERRORS as exc:
                log.warning(
                    "cannot record %d delivery outcome(s) (%s): they are made again after their "
                    "lease",
                    len(self._done),
                    _short(exc),
                )
            self.sender.close()
            self.tenant_keys.close()

    def _pause(self, failures: int, exc: BaseException) -> int:
        wait = min(0.5 * 2 ** min(failures, 5), 10.0)
        log.warning("result store error (%s); again in %.1f s", _short(exc), wait)
        self.stop.wait(wait)
        return failures + 1

    def turn(self) -> None:
        """One pass: write what finished, now and then claim stale entries and sweep, start
        due deliveries, read events (waiting for them only while threads are free)."""
        self.last_turn = now = time.monotonic()
        self._wake.clear()
        self.flush()
        if now >= self._next_claim:
            self.claim_stale()
            self.sweeper.sweep()
            self.sender.prune()
            self._next_claim = now + CLAIM_EVERY
        room = self.capacity - self.outstanding()
        wait = MAX_BLOCK
        saturated = room <= 0
        if not saturated:
            started, wait = self.start_due(room)
            saturated = started >= room  # more may be due
        if saturated:
            self.read(None)  # take new events in, without waiting: every slot is taken
            self._wake.wait(MAX_BLOCK)  # until half the leased work is done
        else:
            self.read(wait)

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

    def ensure_group(self) -> None:
        """The consumer group, created at the stream's start: events written before the first
        dispatcher ran are delivered too (MKSTREAM: the stream may not exist yet)."""
        try:
            self.store.xgroup_create(self.stream, WEBHOOK_CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding

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
            if _text(start) == "0-0":
                break
        if time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + 60
            for info in self.store.xinfo_consumers(self.stream, WEBHOOK_CONSUMER_GROUP):
                name = _text(info.get("name"))
                idle = int(info.get("idle") or 0)
                forget = idle > FORGET_CONSUMER_IDLE_MS and not info.get("pending")
                if forget and name != self.consumer:
                    self.store.xgroup_delconsumer(self.stream, WEBHOOK_CONSUMER_GROUP, name)

    def start_due(self, room: int) -> tuple[int, float]:
        """Lease up to `room` due deliveries, read their results in one MGET and start them.
        Returns how many, and the seconds until the next is due (at most MAX_BLOCK)."""
        now = time.time()
        lease_end = now + 2 * self.timeout + LEASE_MARGIN
        due, first = self._lease(keys=[self.retries], args=[repr(now), repr(lease_end), room])
        if not due:
            wait = MAX_BLOCK if not first else max(float(first) - time.time(), 0.0)
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
            raw = ahead.get(member, _UNREAD)
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
                    pipe = self.store.pipeline(transaction=False)
                    pipe.lpush(self.dead, *dead)
                    pipe.ltrim(self.dead, 0, self.settings.dead_letter_limit - 1)
                    pipe.execute()
                    for entry in dead:
                        log.warning("webhook given up: %s", entry)
                    batch = [replace(o, dead="") for o in batch]
                args: list[Any] = []
                for o in batch:
                    args += [o.member, o.new, repr(o.due)]
                self._replace(keys=[self.retries], args=args)
            except BaseException:
                self._done.extendleft(reversed(batch))  # written at the next turn
                raise

    def backlog(self) -> tuple[dict[str, int], float]:
        """The backlog's counts (see Backlog) and the age of its oldest waiting work."""
        now = time.time()
        oldest = now
        stream = unread = 0
        try:
            groups = self.store.xinfo_groups(self.stream)
        except redis.ResponseError:  # no stream yet
            groups = []
        group = next((g for g in groups if _text(g.get("name")) == WEBHOOK_CONSUMER_GROUP), None)
        if group is not None:
            last = _text(group.get("last-delivered-id")) or "0-0"
            after = self.store.xrange(self.stream, min=last, count=2)
            first_unread = next((i for i, _ in after if _text(i) != last), None)
            if first_unread is not None:
                oldest = min(oldest, _entry_time(first_unread))
            lag = group.get("lag")
            if lag is None and first_unread is not None:  # Redis before 7, or after a trim
                unread = len(self.store.xrange(self.stream, min=_text(first_unread), count=10_000))
            else:
                unread = int(lag or 0)
            pending = self.store.xpending(self.stream, WEBHOOK_CONSUMER_GROUP)
            if pending.get("pending"):
                oldest = min(oldest, _entry_time(pending["min"]))
            stream = unread + int(pending.get("pending") or 0)
        total = int(self.store.zcard(self.retries))
        due = int(self.store.zcount(self.retries, "-inf", now))
        first_due = self.store.zrangebyscore(
            self.retries, "-inf", now, start=0, num=1, withscores=True
        )
        if first_due:
            oldest = min(oldest, float(first_due[0][1]))
        counts = {"stream": stream, "due": due, "later": total - due}
        return counts, max(now - oldest, 0.0)

    # -- one delivery ------------------------------------------------------------------------

    def _deliver_safely(self, member: Any, delivery: Delivery, raw: Any) -> None:
        try:
            if self.stop.is_set():
                # Leased but not started when SIGTERM came: due again at once, for any one.
                self._done.append(Outcome(member, member, time.time()))
                return
            self.metrics.in_flight.inc()
            try:
                self.deliver(member, delivery, raw)
            finally:
                self.metrics.in_flight.dec()
        except Exception:  # a store error: the lease runs out and it is tried again
            log.exception("webhook delivery interrupted; it is tried again after its lease")
        finally:
            with self._lock:
                self._outstanding -= 1
                if self._outstanding <= self.concurrency:
                    self._wake.set()

    def deliver(
        self, member: bytes | str, delivery: Delivery | None = None, raw: Any = _UNREAD
    ) -> Attempt:
        """One attempt at a leased delivery; what became of it (removed, rescheduled or
        dead-lettered) is queued for the loop to write."""
        if delivery is None:
            delivery = Delivery.from_member(member)
        if delivery.body is None:
            delivery = replace(delivery, body=self.payload(delivery, raw), first_at=time.time())
        keys, why = self.keys, ""
        if delivery.tenant:
            keys, why = self.tenant_keys.lookup(delivery.tenant)
        if why:
            attempt = Attempt(False, error=why, refused=True)
            reason = "tenant"
        else:
            started = time.monotonic()
            attempt = self.attempt(delivery, keys)
            self.metrics.seconds.observe(time.monotonic() - started)
            reason = "refused" if attempt.refused else "attempts"
        delivery = replace(
            delivery,
            attempts=delivery.attempts + 1,
            status=attempt.status,
            last_error=attempt.error,
        )
        if attempt.ok:
            self.metrics.outcomes.labels("delivered").inc()
            self._done.append(Outcome(member))
            log.debug("webhook %s delivered (HTTP %s)", delivery.webhook_id, attempt.status)
        elif attempt.refused or delivery.attempts >= self.settings.webhook_max_attempts:
            self.metrics.outcomes.labels(reason if attempt.refused else "dead").inc()
            self._done.append(Outcome(member, dead=self.dead_letter(delivery, reason)))
        else:
            self.metrics.outcomes.labels("retry").inc()
            delay = retry_delay(delivery.attempts, self.settings.webhook_retry_backoff)
            self._done.append(Outcome(member, delivery.member(), time.time() + delay))
            log.info(
                "webhook %s to %s: attempt %d failed (%s); again in %.1f s",
                delivery.webhook_id,
                display_url(delivery.url),
                delivery.attempts,
                attempt.error,
                delay,
            )
        return attempt

    def payload(self, delivery: Delivery, raw: Any = _UNREAD) -> str:
        """The body, from the result store (the job's result, or the group's summary); `raw`:
        the job's result as read ahead."""
        if delivery.kind == "group":
            data = group_payload(delivery, self.group_summary(delivery.id))
        else:
            if raw is _UNREAD:
                raw = self.store.get(result_key(delivery.id, self.prefix))
            data = job_payload(delivery, raw)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def group_summary(self, group_id: str) -> dict[str, Any] | None:
        """The group's status (producer.groups: counts, progress, timings), or None once it
        expired (the event's counters then)."""
        try:
            found = groups.status(self.store, group_id, self.prefix, _none_running)
        except groups.UnknownGroup:
            return None
        return found.to_dict()

    def attempt(self, delivery: Delivery, keys: Sequence[bytes] | None = None) -> Attempt:
        """POST the delivery once, signed with `keys` (default WEBHOOK_SECRET's); never raises
        for what the receiver or the network does."""
        try:
            check_webhook(delivery.url)
            target = urls.parse(delivery.url)
        except (InvalidWebhook, InvalidArguments, SourceNotAllowed) as exc:
            return Attempt(False, error=f"refused: {exc}", refused=True)
        body = (delivery.body or "").encode()
        timestamp = int(time.time())
        headers = {
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                self.keys if keys is None else keys, delivery.webhook_id, timestamp, body
            ),
        }
        answer = self.sender.post(target, body, headers, self.timeout)
        if answer.timed_out:
            return Attempt(False, error=self._too_slow())
        if answer.status is None:
            return Attempt(False, error=answer.error, refused=answer.refused)
        if 200 <= answer.status < 300:
            return Attempt(True, answer.status)
        return Attempt(False, answer.status, f"HTTP {answer.status}")

    def _too_slow(self) -> str:
        return f"no answer within WEBHOOK_TIMEOUT ({self.timeout:g} s)"

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        """A delivery given up on, as its dead letter (JSON); `flush` records it (newest
        first, capped) with one log line."""
        entry = {
            "webhook_id": delivery.webhook_id,
            "kind": delivery.kind,
            "id": delivery.id,
            "url": display_url(delivery.url),
            "reason": reason,
            "status": delivery.status,
            "error": delivery.last_error,
            "attempts": delivery.attempts,
            "state": delivery.state,
            "first_at": delivery.first_at or None,
            "at": time.time(),
        }
        if delivery.tenant:
            entry["tenant"] = delivery.tenant
        return json.dumps(entry, sort_keys=True)


def _entry_time(entry_id: Any) -> float:
    """A stream entry's time (its id's milliseconds), epoch seconds."""
    return int(_text(entry_id).split("-", 1)[0]) / 1000.0


def _none_running(ids: Sequence[str]) -> list[str]:
    # Asked only of unfinished jobs, and a group's event comes once none is left.
    return ["PENDING"] * len(ids)


def _stream_entries(reply: Any) -> list[tuple[Any, list[tuple[Any, Any]]]]:
    """XREADGROUP's reply as (stream, entries) pairs, from RESP2 (a list) or RESP3 (a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(stream, entries) for stream, entries in reply]


def _short(exc: BaseException) -> str:
    text = redact_text(str(exc) or type(exc).__name__)
    return text if len(text) <= 200 else text[:200] + "..."


_STORE_ERRORS: tuple[type[BaseException], ...] = (*result_store_errors(), redis.RedisError)


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.webhooks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    logging.basicConfig(
        level=settings.log_level or "INFO", format="%(asctime)s %(levelname)s %(message)s"
    )
    store = settings.result_config.client(socket_connect_timeout=5, socket_timeout=10)
    try:
        dispatcher = Dispatcher(settings, store, consumer_name())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    endpoint = None
    if settings.metrics_port:
        from worker.endpoint import Endpoint

        endpoint = Endpoint(settings.metrics_addr, settings.metrics_port, _routes(dispatcher))
        endpoint.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dispatcher.stop.set())
    log.info(
        "webhook dispatcher %s following %s on %s (%d at once, %g s per attempt, %d attempts)",
        dispatcher.consumer,
        dispatcher.stream,
        settings.result_config.safe_url(),
        settings.webhook_concurrency,
        settings.webhook_timeout,
        settings.webhook_max_attempts,
    )
    try:
        dispatcher.run()
    finally:
        if endpoint is not None:
            endpoint.stop()
        store.close()
    log.info("webhook dispatcher stopped")
    return 0


def _routes(dispatcher: Dispatcher) -> dict[str, Any]:
    def healthz() -> tuple[int, bytes, str]:
        stalled = time.monotonic() - dispatcher.last_turn > STALL_AFTER
        return (503, b"stalled\n", "text/plain") if stalled else (200, b"ok\n", "text/plain")

    def metrics() -> tuple[int, bytes, str]:
        return 200, generate_latest(dispatcher.metrics.registry), CONTENT_TYPE_LATEST

    return {"/metrics": metrics, "/healthz": healthz}


if __name__ == "__main__":
    raise SystemExit(main())
