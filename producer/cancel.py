"""Cancels and deadlines on the producer's side: `Client.cancel` (`imgqueue cancel`:
cli/cancel.py), and the `deadline=` of submits.

A cancel is a key on the result store, `imgqueue:cancel:<id>` (core.lifecycle.cancel_key), that
waits for the job's message: the worker that takes the message ends the job REVOKED, with the
error type `Cancelled`, without fetching or inferring anything, whenever that is (a worker that
starts a week later included), then deletes the key. It is kept CANCEL_TTL (30 days) at most.

The cancel writes its key (`SET NX`) before it reads the job's state; a worker writes STARTED
before it looks for the key (worker/cancels.py has the whole agreement). So:

- no state yet: the job is queued (or unknown: Redis cannot tell without reading every queue),
  and no worker has started it: it is cancelled;
- STARTED or RETRY: the cancel takes its key back (`GETDEL`). Still its own: the worker has not
  looked, and will find nothing: too late, the job runs to its end. `taken`: the worker found
  it first: cancelled;
- a final state: too late (its key is deleted), unless it already ended cancelled.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import redis

from core.connections import RedisConfig, ResultStoreConfig, mget
from core.errors import BrokerUnavailable, ProducerError, RedisFull
from core.lifecycle import CANCEL_TAKEN, CANCEL_TTL, cancel_key
from core.memory import is_out_of_memory
from core.states import FINAL_STATES, read
from core.text import text

# Ids per round trip.
_CHUNK = 500
# How long a cancel waits for another cancel of the same started job to learn its fate.
_OTHERS_WAIT_S = 2.0
# The longest task id a worker accepts (worker/bulk.MAX_ID_CHARS).
MAX_ID_CHARS = 255


@dataclass(frozen=True)
class CancelResult:
    """What a cancel did, id by id (each listed once, in the order given)."""

    #: Will end REVOKED (`Cancelled`) without running, or already did.
    cancelled: list[str] = field(default_factory=list)
    #: Started or finished before the cancel: each ends as it would have (see `states`).
    too_late: list[str] = field(default_factory=list)
    #: Not a task id (empty, unprintable, longer than 255 characters): nothing was recorded.
    unknown: list[str] = field(default_factory=list)
    #: Each id's state as the cancel found it (PENDING: queued, or never submitted).
    states: dict[str, str] = field(default_factory=dict)

    @property
    def all_cancelled(self) -> bool:
        return not self.too_late and not self.unknown

    def verdicts(self) -> dict[str, str]:
        """id -> "cancelled", "too-late" or "unknown"."""
        out = dict.fromkeys(self.cancelled, "cancelled")
        out.update(dict.fromkeys(self.too_late, "too-late"))
        out.update(dict.fromkeys(self.unknown, "unknown"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "cancelled": self.cancelled,
            "too_late": self.too_late,
            "unknown": self.unknown,
            "states": self.states,
        }


class Client(Protocol):
    """What a cancel needs of a producer.client.Client, which calls in here (so this module
    does not import it)."""

    config: RedisConfig
    result_config: ResultStoreConfig

    @property
    def results(self) -> Any: ...


def valid_id(task_id: Any) -> bool:
    return isinstance(task_id, str) and 0 < len(task_id) <= MAX_ID_CHARS and task_id.isprintable()


def cancel(client: Client, task_ids: Iterable[str]) -> CancelResult:
    """Cancel these jobs (see the module doc). Raises BrokerUnavailable when the result store
    cannot be reached, RedisFull when it is full, ProducerError when this Redis user may not
    write cancels."""
    ids = list(dict.fromkeys(task_ids))
    result = CancelResult(unknown=[i for i in ids if not valid_id(i)])
    valid = [i for i in ids if valid_id(i)]
    token = f"{time.time():.3f} {uuid.uuid4().hex[:12]}"  # this call's: told from another's
    try:
        for start in range(0, len(valid), _CHUNK):
            _Chunk(client, valid[start : start + _CHUNK], token).run(result)
    except redis.exceptions.NoPermissionError as exc:
        raise ProducerError(
            f"the result store refused a cancel ({exc}): this Redis user needs the keys "
            "imgqueue:cancel:* (the producer user of deploy/redis.conf has them)"
        ) from exc
    except redis.ResponseError as exc:
        if is_out_of_memory(exc):
            raise RedisFull(None, None) from exc
        raise
    except _errors() as exc:
        where = client.result_config.safe_url()
        raise BrokerUnavailable(f"cannot reach the result store at {where}: {exc}") from exc
    order = {task_id: n for n, task_id in enumerate(ids)}
    for bucket in (result.cancelled, result.too_late):
        bucket.sort(key=order.__getitem__)
    return result


class _Chunk:
    """One round of the cancel for up to _CHUNK ids."""

    def __init__(self, client: Client, ids: list[str], token: str) -> None:
        self.r = client.results
        self.config = client.config
        self.prefix = client.result_config.key_prefix
        self.ids = ids
        self.token = token

    def key(self, task_id: str) -> str:
        return self.prefix + cancel_key(task_id)

    def states(self, ids: list[str]) -> list[tuple[str, str | None]]:
        """(state, error type) of each job; PENDING where nothing is stored."""
        raws = mget(self.r, [self.config.result_key(i) for i in ids])
        return [_state(raw) for raw in raws]

    def run(self, out: CancelResult) -> None:
        pipe = self.r.pipeline(transaction=False)
        for task_id in self.ids:
            pipe.set(self.key(task_id), self.token, nx=True, get=True, ex=CANCEL_TTL)
        olds = [None if v is None else text(v) for v in pipe.execute()]
        withdraw: list[str] = []  # started: take our key back, or learn the worker took it
        drop: list[str] = []  # finished: our key is of no use
        others: list[str] = []  # started, with another cancel's key: wait for its fate
        for task_id, old, (state, error) in zip(self.ids, olds, self.states(self.ids), strict=True):
            out.states[task_id] = state
            if state in FINAL_STATES:
                late = not (state == "REVOKED" and error == "Cancelled")
                (out.too_late if late else out.cancelled).append(task_id)
                if old is None:
                    drop.append(task_id)
            elif state == "PENDING" or old == CANCEL_TAKEN:
                out.cancelled.append(task_id)
            elif old is None:
                withdraw.append(task_id)
            else:
                others.append(task_id)
        if drop:
            pipe = self.r.pipeline(transaction=False)
            for task_id in drop:
                pipe.delete(self.key(task_id))
            pipe.execute()
        if withdraw:
            self._withdraw(withdraw, out)
        if others:
            self._wait_for_others(others, out)

    def _withdraw(self, ids: list[str], out: CancelResult) -> None:
        pipe = self.r.pipeline(transaction=False)
        for task_id in ids:
            pipe.getdel(self.key(task_id))
        taken = []
        for task_id, value in zip(ids, pipe.execute(), strict=True):
            value = None if value is None else text(value)
            if value == self.token:
                out.too_late.append(task_id)  # the worker never saw it: the job runs on
                continue
            # `taken`: a worker found it first and is ending the job; gone: it has ended it.
            out.cancelled.append(task_id)
            if value == CANCEL_TAKEN:
                taken.append(task_id)
        if taken:  # put back what the worker keeps until REVOKED is stored
            pipe = self.r.pipeline(transaction=False)
            for task_id in taken:
                pipe.set(self.key(task_id), CANCEL_TAKEN, nx=True, ex=CANCEL_TTL)
            pipe.execute()

    def _wait_for_others(self, ids: list[str], out: CancelResult) -> None:
        """Started jobs another cancel is deciding about (its key was there first): a worker
        takes that key, or that cancel takes it back, within a round trip or two."""
        end = time.monotonic() + _OTHERS_WAIT_S
        while ids:
            values = [
                None if v is None else text(v) for v in mget(self.r, [self.key(i) for i in ids])
            ]
            states = self.states(ids)
            waiting = []
            for task_id, value, (state, error) in zip(ids, values, states, strict=True):
                out.states[task_id] = state
                if value == CANCEL_TAKEN or (state == "REVOKED" and error == "Cancelled"):
                    out.cancelled.append(task_id)
                elif value is None or state in FINAL_STATES or time.monotonic() >= end:
                    out.too_late.append(task_id)
                else:
                    waiting.append(task_id)
            ids = waiting
            if ids:
                time.sleep(0.02)


def _state(raw: Any) -> tuple[str, str | None]:
    state, error = read(raw)
    return state or "PENDING", error


def _errors() -> tuple[type[Exception], ...]:
    from redis.exceptions import RedisClusterException

    from core.connections import result_store_errors

    return (*result_store_errors(), RedisClusterException)


# -- deadlines --------------------------------------------------------------------------------


def deadline_at(deadline: float | datetime | None, now: float | None = None) -> float | None:
    """A submit's `deadline=` as epoch seconds: seconds from now (an int or float above 0), or
    an absolute time (a datetime; a naive one is local time). None: no deadline. ValueError
    for anything else, a time already past included (its job could only expire)."""
    if deadline is None:
        return None
    if isinstance(deadline, datetime):
        at = deadline.timestamp()
        current = time.time() if now is None else now
        if at <= current:
            zone = deadline.tzinfo
            shown = deadline.isoformat() + ("" if zone else " (local time)")
            then = datetime.fromtimestamp(current, zone).isoformat(timespec="seconds")
            raise ValueError(f"deadline {shown} has already passed (it is now {then})")
        return at
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise ValueError(
            f"deadline must be seconds from now or a datetime, got {type(deadline).__name__}"
        )
    if not math.isfinite(deadline) or deadline <= 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
    return (time.time() if now is None else now) + float(deadline)
