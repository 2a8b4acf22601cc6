"""`python -m worker.webhooks`: POSTs each finished job's result to its webhook, signed.

The dispatcher follows the completion events (producer.jobs.EVENTS_STREAM, on the result
store) with the consumer group WEBHOOK_CONSUMER_GROUP, so workers never wait for a receiver:
a job's result and the next batch never depend on it. Any number of dispatchers may run; each
reads as `<host>:<pid>`.

An event with a webhook becomes a delivery in the retry set (WEBHOOK_RETRIES, a sorted set
scored by when each is due; its first attempt is due at once), and its stream entry is
acknowledged. A dispatcher with a free slot leases due deliveries (their score moves past the
lease, so a dispatcher that dies mid-attempt only delays them) and POSTs them from a pool of
WEBHOOK_CONCURRENCY threads:

- the body is the job's result as `imgqueue result` prints it (read from the result store at
  the first attempt and kept, byte for byte, for every retry), or a group's summary;
- headers `webhook-id` (the same for every attempt of one delivery), `webhook-timestamp` and
  `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per
  WEBHOOK_SECRET key), as Standard Webhooks specifies;
- 2xx: delivered. Anything else, a connection error or no answer within WEBHOOK_TIMEOUT: tried
  again after WEBHOOK_RETRY_BACKOFF seconds, doubling (plus up to 10%), at most an hour, until
  WEBHOOK_MAX_ATTEMPTS; then dead-lettered (WEBHOOK_DEAD_LETTERS, newest first, capped at
  DEAD_LETTER_LIMIT; `imgqueue status` shows them) with one log line.
- the URL obeys the fetch policy (worker.fetch: public addresses only unless
  FETCH_ALLOW_NETWORKS, resolved once and connected to exactly the vetted address, TLS checked
  for the host name). A refused one is dead-lettered at once, never connected to. Redirects
  are not followed: a 3xx is a failed attempt.

Entries a dead dispatcher read but never moved are claimed after CLAIM_IDLE_MS (XAUTOCLAIM).
SIGTERM stops reading and leasing, lets the attempts in flight end (at most WEBHOOK_TIMEOUT),
and exits 0. With METRICS_PORT set: /metrics and /healthz (see docs/lifecycle.md).
Celery and torch are never imported.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from urllib3.exceptions import HTTPError as Urllib3Error

from producer import groups
from producer.connections import result_store_errors
from producer.contract import result_key
from producer.jobs import (
    EVENT_FIELDS,
    EVENTS_STREAM,
    WEBHOOK_CONSUMER_GROUP,
    WEBHOOK_DEAD_LETTERS,
    WEBHOOK_RETRIES,
)
from producer.redaction import display_url, redact_text
from producer.webhooks import InvalidWebhook, check_webhook
from worker import urls
from worker.errors import ConfigError, FetchFailed, InvalidArguments, SourceNotAllowed
from worker.fetch import _connection, _cut, vetted_addresses
from worker.settings import Settings, webhook_keys

log = logging.getLogger("imgqueue.webhooks")

USER_AGENT = "imgqueue-webhooks/0.1"
MAX_RETRY_DELAY = 3600.0  # seconds; the doubling stops here
JITTER = 0.1  # each retry delay is stretched by up to this fraction, so retries spread out
CLAIM_IDLE_MS = 30_000  # a stream entry read this long ago and never acknowledged is claimed
CLAIM_EVERY = 5.0  # seconds between looks for such entries
FORGET_CONSUMER_IDLE_MS = 3_600_000  # consumers silent this long, holding nothing, are removed
READ_COUNT = 500  # stream entries per read
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
# A leased delivery is replaced by its next attempt (ARGV[2] at ARGV[3]), or removed (""), only
# while it is still there: another dispatcher may have taken it over after the lease ran out.
_REPLACE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
  return 1
end
return 0
"""


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
            extra=tuple(sorted((k, v) for k, v in got.items() if k not in EVENT_FIELDS)),
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


class Metrics:
    """Prometheus metrics of this dispatcher (served only with METRICS_PORT)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = Counter(
            "imgqueue_webhook_attempts",
            "Webhook attempts by outcome: delivered, retry (failed, tried again), dead "
            "(failed for the last time), refused (SSRF policy or URL: never connected)",
            ["outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "imgqueue_webhook_attempt_seconds",
            "Time of one webhook attempt, connecting to the answer",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "imgqueue_webhook_in_flight", "Webhook attempts in progress", registry=self.registry
        )


class Dispatcher:
    """Moves events to the retry set and delivers what is due; `run` until `stop` is set."""

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
        # Connecting may take the whole attempt, never longer (a watchdog cuts the rest).
        self._connect_settings = replace(
            settings, fetch_connect_timeout=min(settings.fetch_connect_timeout, self.timeout)
        )
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.last_turn = time.monotonic()
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook")
        self._busy = 0
        self._lock = threading.Lock()
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
            # In-flight attempts end within WEBHOOK_TIMEOUT; nothing new was leased.
            self._pool.shutdown(wait=True)

    def _pause(self, failures: int, exc: BaseException) -> int:
        wait = min(0.5 * 2 ** min(failures, 5), 10.0)
        log.warning("result store error (%s); again in %.1f s", _short(exc), wait)
        self.stop.wait(wait)
        return failures + 1

    def turn(self) -> None:
        """One pass: claim stale entries now and then, start due deliveries, read events."""
        self.last_turn = now = time.monotonic()
        if now >= self._next_claim:
            self.claim_stale()
            self._next_claim = now + CLAIM_EVERY
        block = MAX_BLOCK
        free = self.free()
        if free:
            block = min(block, self.start_due(free))
        reply = self.store.xreadgroup(
            WEBHOOK_CONSUMER_GROUP,
            self.consumer,
            {self.stream: ">"},
            count=READ_COUNT,
            block=max(int(block * 1000), 1),
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

    def free(self) -> int:
        with self._lock:
            return self.settings.webhook_concurrency - self._busy

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

    def start_due(self, free: int) -> float:
        """Lease up to `free` due deliveries and start them; seconds until the next is due."""
        now = time.time()
        lease_end = now + 2 * self.timeout + LEASE_MARGIN
        due, first = self._lease(keys=[self.retries], args=[repr(now), repr(lease_end), free])
        for member in due:
            with self._lock:
                self._busy += 1
            self.metrics.in_flight.inc()
            self._pool.submit(self._deliver_safely, member)
        if due or not first:
            return MAX_BLOCK if not due else 0.0
        return max(float(first) - time.time(), 0.0)

    # -- one delivery ------------------------------------------------------------------------

    def _deliver_safely(self, member: bytes) -> None:
        try:
            try:
                Delivery.from_member(member)
            except (ValueError, TypeError, AttributeError):
                log.error("dropped a retry set member that is not a delivery: %.200r", member)
                self._replace(keys=[self.retries], args=[member, "", 0])
                return
            self.deliver(member)
        except Exception:  # a store error: the lease runs out and it is tried again
            log.exception("webhook delivery interrupted; it is tried again after its lease")
        finally:
            self._done()

    def _done(self) -> None:
        self.metrics.in_flight.dec()
        with self._lock:
            self._busy -= 1

    def deliver(self, member: bytes | str) -> Attempt:
        """One attempt at a leased delivery; then it is removed, rescheduled or dead-lettered."""
        delivery = Delivery.from_member(member)
        if delivery.body is None:
            delivery = replace(delivery, body=self.payload(delivery), first_at=time.time())
        started = time.monotonic()
        attempt = self.attempt(delivery)
        self.metrics.seconds.observe(time.monotonic() - started)
        delivery = replace(
            delivery,
            attempts=delivery.attempts + 1,
            status=attempt.status,
            last_error=attempt.error,
        )
        if attempt.ok:
            self.metrics.outcomes.labels("delivered").inc()
            self._replace(keys=[self.retries], args=[member, "", 0])
            log.debug("webhook %s delivered (HTTP %s)", delivery.webhook_id, attempt.status)
        elif attempt.refused or delivery.attempts >= self.settings.webhook_max_attempts:
            self.metrics.outcomes.labels("refused" if attempt.refused else "dead").inc()
            self.dead_letter(delivery, "refused" if attempt.refused else "attempts")
            self._replace(keys=[self.retries], args=[member, "", 0])
        else:
            self.metrics.outcomes.labels("retry").inc()
            delay = retry_delay(delivery.attempts, self.settings.webhook_retry_backoff)
            due = time.time() + delay
            self._replace(keys=[self.retries], args=[member, delivery.member(), repr(due)])
            log.info(
                "webhook %s to %s: attempt %d failed (%s); again in %.1f s",
                delivery.webhook_id,
                display_url(delivery.url),
                delivery.attempts,
                attempt.error,
                delay,
            )
        return attempt

    def payload(self, delivery: Delivery) -> str:
        """The body, from the result store (the job's result, or the group's summary)."""
        if delivery.kind == "group":
            data = group_payload(delivery, self.group_summary(delivery.id))
        else:
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

    def attempt(self, delivery: Delivery) -> Attempt:
        """POST the delivery once; never raises for what the receiver or the network does."""
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
            "webhook-signature": sign(self.keys, delivery.webhook_id, timestamp, body),
        }
        deadline = time.monotonic() + self.timeout
        try:
            address = vetted_addresses(target.host, target.port, self.settings)[0]
        except SourceNotAllowed as exc:
            return Attempt(False, error=f"refused: {exc}", refused=True)
        except FetchFailed as exc:
            return Attempt(False, error=str(exc))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Attempt(False, error=self._too_slow())
        conn = _connection(address, target.port, target.host, target.secure, self._connect_settings)
        watchdog = threading.Timer(remaining, _cut, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()
            conn.timeout = remaining
            conn.request(
                "POST",
                target.target,
                body=body,
                headers=headers,
                preload_content=False,
                decode_content=False,
            )
            response = conn.getresponse()
            status = response.status
            response.close()
        except ssl.SSLCertVerificationError as exc:
            return Attempt(False, error=f"TLS certificate rejected: {exc.verify_message}")
        except (Urllib3Error, OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline - 0.01:
                return Attempt(False, error=self._too_slow())
            return Attempt(False, error=f"POST failed: {_short(exc)}")
        finally:
            watchdog.cancel()
            conn.close()
        if 200 <= status < 300:
            return Attempt(True, status)
        return Attempt(False, status, f"HTTP {status}")

    def _too_slow(self) -> str:
        return f"no answer within WEBHOOK_TIMEOUT ({self.timeout:g} s)"

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Record a delivery given up on (newest first, capped), with one log line."""
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
        pipe = self.store.pipeline(transaction=False)
        pipe.lpush(self.dead, json.dumps(entry, sort_keys=True))
        pipe.ltrim(self.dead, 0, self.settings.dead_letter_limit - 1)
        pipe.execute()
        log.warning("webhook given up: %s", json.dumps(entry, sort_keys=True))


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
        prog="python -m worker.webhooks",
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
