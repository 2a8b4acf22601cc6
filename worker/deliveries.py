"""Counting deliveries of a job, so one that keeps killing its worker is capped, not looped.

Celery on Redis re-delivers a message whose worker died before acknowledging it. Each start of
a job increments a counter in Redis (atomic INCR, with a TTL so counters never pile up); once
the count passes MAX_DELIVERIES the job fails with JobLost instead of running again.

The key includes Celery's retry number: a retry of a transient fetch error is a new message
the worker sent on purpose, not a redelivery, and starts its own count.

A worker process runs many jobs at once (threads feeding one batcher), so a job that kills it
takes the others down too. To keep those innocent jobs from being capped with it, a job that
was started before (a suspect) runs alone in its process: it waits until running jobs finish
and holds new ones back, so only the suspect itself is counted if the process dies again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import redis

from core.keys import delivery_key as delivery_key
from worker import cancels as _cancels
from worker import result_store
from worker.backend import Started
from worker.errors import JobLost
from worker.settings import Settings

log = logging.getLogger(__name__)


def counter_ttl(settings: Settings) -> int:
    """Long enough to see every redelivery the cap allows, and never shorter than a result."""
    return max(settings.result_expires, settings.visibility_timeout * (settings.max_deliveries + 2))


class Gate:
    """A readers-writer lock: ordinary jobs share the process, a suspect job runs alone.

    "Alone" also waits until the jobs that ran before it are acknowledged (see `settled`):
    a job whose body has returned but whose ack has not yet reached Redis would otherwise
    die with the suspect and be delivered again.
    """

    def __init__(self, settle_timeout: float = 10.0) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._alone = False
        self._waiting_alone = 0
        self._unsettled: set[str] = set()
        self.settle_timeout = settle_timeout

    @contextmanager
    def shared(self, job: str) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._running += 1
            self._unsettled.add(job)
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self, job: str) -> Iterator[None]:
        with self._cond:
            self._waiting_alone += 1
            self._cond.wait_for(lambda: not self._alone and self._running == 0)
            self._alone = True
            self._waiting_alone -= 1
            others = lambda: not (self._unsettled - {job})  # noqa: E731
            if not self._cond.wait_for(others, self.settle_timeout):
                self._unsettled.clear()  # acks lost with a connection: stop waiting for them
            self._unsettled.add(job)
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()

    def settled(self, job: str) -> None:
        """The job's message was acknowledged or rejected (called from the transport)."""
        with self._cond:
            self._unsettled.discard(job)
            self._cond.notify_all()


class Rider(Protocol):
    """Commands that ride on a start's round trip, after its count (a bulk message's
    images' start, worker/cancels.BulkStart)."""

    def add(self, pipe: Any) -> int:
        """Queue the commands; returns how many replies they make."""
        ...

    def settle(self, replies: Sequence[Any]) -> None:
        """Their replies (errors as values)."""
        ...


@contextmanager
def tracked(
    gate: Gate,
    client: Any,
    task_id: str,
    retries: int,
    settings: Settings,
    redelivered: bool = True,
    started: Started | None = None,
    cancels: bool = False,
    rider: Rider | None = None,
) -> Iterator[int]:
    """Run a job's body counted, and alone if it was started before; yields its delivery number.

    Only a message the broker marks `redelivered` can have been started before (kombu sets
    the flag whenever it restores an unacknowledged message), so only those pay for the check.
    `started`: the job's STARTED state, written in the same round trip as the count.
    `cancels`: look for the job's cancel in that round trip too (see record_start).
    `rider`: more commands for that round trip.
    """
    suspect = redelivered and started_before(client, task_id, retries, settings)
    # A suspect waiting longer than the visibility timeout would be restored and delivered
    # again while it waits (a cascade after a Redis restart, when acks of the old connection
    # never arrive): keep the wait for earlier acks well inside that timeout.
    gate.settle_timeout = min(10.0, settings.visibility_timeout / 4)
    with gate.alone(task_id) if suspect else gate.shared(task_id):
        yield record_start(client, task_id, retries, settings, redelivered, started, cancels, rider)


def started_before(client: redis.Redis, task_id: str, retries: int, settings: Settings) -> bool:
    try:
        return bool(client.exists(delivery_key(task_id, retries, settings.redis_key_prefix)))
    except result_store.ERRORS:
        return False


def record_start(
    client: redis.Redis,
    task_id: str,
    retries: int,
    settings: Settings,
    redelivered: bool = True,
    started: Started | None = None,
    cancels: bool = False,
    rider: Rider | None = None,
) -> int:
    """Count one start of this job (and store its STARTED state); raises JobLost when it is
    over MAX_DELIVERIES.

    Returns the delivery number (1 for the first). A first delivery sets its counter outright
    (one command); a redelivery increments it. When Redis cannot count (unreachable, or full)
    the job runs uncounted: its result waits for Redis anyway.

    With `cancels`, the job's cancel is looked for after its STARTED state is written
    (worker/cancels.py), in the same round trip where the store is one Redis: raises
    Cancelled when there is one, and cancels.Ended when the job had already ended REVOKED
    (the STARTED write, `SET NX GET`, returns the state it found). `rider`'s commands go
    last in the round trip.
    """
    key = delivery_key(task_id, retries, settings.redis_key_prefix)
    ttl = counter_ttl(settings)
    look, shared = (
        _cancels.look(client, task_id, settings.redis_key_prefix) if cancels else (None, False)
    )
    verdict: Exception | None = None
    try:
        pipe = client.pipeline(transaction=False)
        if redelivered:
            pipe.incr(key)
            pipe.expire(key, ttl)
        else:
            pipe.set(key, 1, ex=ttl)
        if started is not None:
            found = look is not None  # the state it finds tells whether it had ended
            pipe.set(started.key, started.value, nx=True, get=found, ex=started.ttl or None)
        if look is not None and shared:
            look.add(pipe)
        rides = rider.add(pipe) if rider is not None else 0
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        count = int(replies[0]) if redelivered else 1
        if rider is not None:
            rider.settle(replies[len(replies) - rides :])
        if look is not None:
            mine = replies[: len(replies) - rides]
            before = mine[2 if redelivered else 1] if started is not None else None
            verdict = look.verdict(look.reply(client, mine, shared), _value(before))
    except result_store.ERRORS as exc:
        log.warning("cannot count deliveries of %s: %s", task_id, exc)
        return 0
    if verdict is not None:  # never runs, whatever its count
        raise verdict
    if count > settings.max_deliveries:
        log.error("job %s lost: delivered %d times (MAX_DELIVERIES)", task_id, count)
        raise JobLost(
            f"the job was delivered {count} times without finishing (MAX_DELIVERIES="
            f"{settings.max_deliveries}); its worker was lost each time, e.g. killed or "
            "out of memory while running it"
        )
    if count > 1:
        log.warning(
            "job %s redelivered (delivery %d of at most %d)",
            task_id,
            count,
            settings.max_deliveries,
        )
    return count


def _value(reply: Any) -> Any:
    """A reply that is a stored value, else None (an error: the state is unknown)."""
    return None if isinstance(reply, Exception) else reply
