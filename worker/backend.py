"""The Redis result backend: every state change in one atomic round trip, a bulk in one call.

Celery's key-value backend reads a job's stored state before every write, so that a late
duplicate cannot overwrite a SUCCESS: a GET (and a JSON decode) then a SET + PUBLISH, two
round trips per state. Here one Lua script (worker/store_script.py: STORE, and the one function
that builds its arguments) does the check and the write inside Redis, and one call stores every
final state of a bulk message (docs/capacity.md has what each costs).

What a stored state may be replaced by: SUCCESS by nothing; FAILURE only by a SUCCESS (a
redelivered copy that got through, or a dead letter requeued after a fix), never by a late
STARTED or RETRY of a duplicate. STARTED is written only where nothing is stored yet (`SET NX`,
or one `MSETNX` for a bulk message and all its images: worker/cancels.BulkStart), never
published, since no waiter acts on it. A FAILURE expires after `result_failure_expires`
(RESULT_FAILURE_EXPIRES), as Celery's own Redis backend does.

A bulk message's own result (its summary) goes in the call that stores its images' states.

A state is PUBLISHed on its key's channel (Celery's `AsyncResult.get()` listens there) only
when someone subscribes: one `PUBSUB NUMSUB` per call instead of a PUBLISH per image.

A full Redis (`maxmemory` with `noeviction`) refuses the write: the store waits and retries
with backoff until memory returns, telling the worker through `on_full` (it stops fetching
and reports not ready) instead of failing the job for a reason that is not its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from worker import events, store_script, tenancy
from worker.redis_full import retry_while_full, telling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    """A job's STARTED state, encoded: written with `SET NX` where no state is stored yet, in
    the same round trip as its delivery count (worker/deliveries.py)."""

    key: str
    value: str | bytes
    ttl: int


class _AtomicStore:
    """The store of this module's doc, for Celery's Redis backend and its Sentinel variant."""

    expires: Any
    failure_expires: Any
    client: Any
    _MAX_STR_VALUE_SIZE: int
    app: Any
    #: PUBLISH stored states to subscribers (off on a cluster: a publish is broadcast).
    publish_states = True

    if TYPE_CHECKING:

        def _get_result_meta(self, **kwargs: Any) -> dict[str, Any]: ...
        def encode(self, data: Any) -> Any: ...
        def encode_result(self, result: Any, state: str) -> Any: ...
        def get_key_for_task(self, task_id: str) -> Any: ...
        def ensure(self, fun: Any, args: Any, **policy: Any) -> Any: ...

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        key = self.get_key_for_task(task_id)
        if state == states.STARTED:
            value = self._value(task_id, result, state, traceback, request)
            self._while_full(self.ensure, self._store_started, (key, value))
        else:
            note = events.note(bytes_to_str(task_id), result, state, request)
            tenant = note.tenant if note is not None else ""
            value = self._value(task_id, result, state, traceback, request, tenant)
            self._while_full(self.ensure, self._store_entries, ([(key, value, state)], [note]))
            tenancy.release(self.app, tenancy.due([note], [state]))
        return result

    def started(self, task_id: str, hostname: str | None) -> Started:
        """The STARTED state Celery's tracer would store (`task_track_started`)."""
        value = self._value(task_id, {"pid": os.getpid(), "hostname": hostname}, states.STARTED)
        key = bytes_to_str(self.get_key_for_task(task_id))
        return Started(key, value, self._ttl(states.STARTED))

    def started_ttl(self) -> int:
        """Seconds a STARTED state is kept (0: forever)."""
        return self._ttl(states.STARTED)

    def store_many(
        self, entries: list[tuple[str, Any, str]], request: Any = None, summary: Any = None
    ) -> None:
        """Final states of many jobs, `(task_id, result or exception, state)`, in one call
        (a bulk message's images), each stored as `_store_result` would. `request`: the
        message that carried them, for their events' queue and groups (default: the request
        of the task this thread runs). `summary`: that message's own result, stored as its
        SUCCESS in the same call (no event: its images have theirs); Celery then stores it
        no more (the request's `ignore_result`)."""
        encoded = [
            (task_id, self.encode_result(result, state), state)
            for task_id, result, state in entries
        ]
        notes = events.notes(encoded, request)
        values = [
            (
                self.get_key_for_task(task_id),
                self._value(task_id, result, state, tenant=note.tenant if note else ""),
                state,
            )
            for (task_id, result, state), note in zip(encoded, notes, strict=True)
        ]
        if summary is not None:
            own = request if request is not None else events.current_request()
            value = self._value(own.id, summary, states.SUCCESS, request=own)
            values.append((self.get_key_for_task(own.id), value, states.SUCCESS))
            notes.append(None)
            encoded.append((own.id, summary, states.SUCCESS))
        if values:
            self._while_full(self.ensure, self._store_entries, (values, notes))
            tenancy.release(self.app, tenancy.due(notes, [state for _, _, state in encoded]))
        if summary is not None:
            own.ignore_result = True  # Celery's mark_as_done: stored here already

    def recount(self, task_ids: list[str], request: Any = None) -> None:
        """Jobs a redelivered bulk message skips as already finished. One Redis counted them
        with their result, in the same script: nothing to do. A cluster counts in a call after
        the result's (worker/results_cluster.py), which a killed worker may not have made."""

    def _value(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        tenant: str = "",
    ) -> Any:
        """The JSON a state is stored as: Celery's meta with the task id, and the tenant of a
        job submitted with one (in a SUCCESS's result too: docs/contract.md)."""
        if tenant and state == states.SUCCESS and isinstance(result, dict):
            result = {**result, "tenant": tenant}
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        if tenant:
            meta["tenant"] = tenant
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        return value

    def _ttl(self, state: str) -> int:
        return int((self.failure_expires if state == states.FAILURE else self.expires) or 0)

    def _store_started(self, key: Any, value: Any) -> bool:
        ttl = self._ttl(states.STARTED)
        return bool(self.client.set(key, value, nx=True, ex=ttl or None))

    def _store_entries(
        self, values: list[tuple[Any, Any, str]], notes: list[events.Note | None] | None = None
    ) -> int:
        """Store `(key, value, state)` entries, announcing the final ones (`notes`: what each
        one's event says, None for a state with none); returns how many took the new state."""
        keys, args = self._script(values, notes)
        return int(self._store_script(keys=keys, args=args))

    def _script(
        self,
        values: list[tuple[Any, Any, str]],
        notes: list[events.Note | None] | None = None,
        announce: bool = True,
    ) -> tuple[list[Any], list[Any]]:
        """STORE's KEYS and ARGV for these `(key, value, state)` entries (worker/store_script.py);
        `announce=False`: the call only reports each key's final state (a cluster announces
        apart)."""
        return store_script.arguments(
            values,
            notes or [None] * len(values),
            self._events,
            publish=self.publish_states,
            failure_ttl=self._ttl(states.FAILURE),
            other_ttl=self._ttl(states.SUCCESS),
            group_ttl=self._group_ttl(),
            announce=announce,
        )

    def _group_ttl(self) -> int:
        """A group lives as long as its results: the longer of the two expiries (0: kept)."""
        ttls = (self._ttl(states.FAILURE), self._ttl(states.SUCCESS))
        return 0 if 0 in ttls else max(ttls)

    @cached_property
    def _events(self) -> events.Events:
        """The events stream and group keys of this store (worker/events.py)."""
        options = self.app.conf.get("result_backend_transport_options") or {}
        prefix = str(options.get("global_keyprefix") or "")
        return events.Events(prefix, events.maxlen_of(self.app))

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(store_script.STORE)

    def _while_full(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)`, retried with backoff for as long as Redis is full; the worker stops
        fetching and is not ready meanwhile (worker/redis_full.py)."""
        tell = telling(self.app, "results")
        return retry_while_full(lambda: call(*args), tell, "storing results")


class ResultBackend(_AtomicStore, RedisBackend):
    """Celery's Redis backend with the read-before-write done server-side (see module doc)."""


class SentinelResultBackend(_AtomicStore, SentinelBackend):
    """The same, through Redis Sentinel (`sentinel://` URLs and the `master_name` option)."""
