"""Results on a Redis Cluster (RESULT_URL=redis-cluster://...), apart from the broker.

The queues stay on one primary (REDIS_URL); the results, the largest and busiest keys, spread
over the cluster's masters by key: `celery-task-meta-<id>` hashes to one of 16384 slots (CRC16
of the whole key, which has no hash tag), and each master owns a share of the slots.

The store is worker/backend.py's (worker/store_script.py's STORE: a SUCCESS is never replaced,
a FAILURE only by a SUCCESS), with what a cluster changes:

- **One script call per key.** A script may only touch keys of one slot, so a bulk message's
  results go as one call per key, pipelined: one round trip to each master that owns some.
- **No PUBLISH.** On a cluster a PUBLISH is broadcast to every node; pollers read keys
  (`Client.wait`, any GET). Celery's `AsyncResult.get()` is therefore not served.
- **Durable before acknowledged.** Replication is asynchronous: a master that acknowledges a
  result and dies before its replica has it loses the result, while the job's message, acked
  after the store, is gone too. So a final state is stored followed by `WAIT <replicas> <ms>`
  on the same connection (WAIT counts that connection's writes), once per master written, in
  the same round trip: the store returns once a replica has the result. A master that has no
  live replica (its own was just promoted, say) cannot confirm: after RESULT_WAIT_TIMEOUT_MS
  the store goes on, logs it, and stops waiting on that master for a few seconds.
- **Failovers are waited through.** A lost connection, CLUSTERDOWN, TRYAGAIN, a slot with no
  master yet: the topology is refreshed and the store retried with backoff (Celery's
  `result_backend_always_retry`), so a job does not fail because a master died.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from functools import cached_property
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, ResultConsumer
from redis import exceptions as rexc

from core.connections import ResultStoreConfig, mget, result_store_errors
from core.keys import outbox_key
from core.outbox import group_fields
from core.states import FINAL_STATES, state_of
from core.text import text
from worker import events, outbox, result_store, testing
from worker.backend import _AtomicStore
from worker.store_script import ACCOUNT, STORE

log = logging.getLogger(__name__)

# How long a master that could not confirm a result to a replica is not waited on, and how
# often that is logged.
DEGRADED_SECONDS = 5.0
WARN_EVERY_SECONDS = 60.0
# Rounds of redirects (a slot moved between masters) before the store is retried later.
_MAX_ROUNDS = 5


class _Process:
    """What the backends of one process share: Celery makes a backend per thread, but one
    cluster client (thread-safe) serves them all, and a master found without a replica is
    skipped by all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: dict[tuple[Any, ...], Any] = {}
        self.degraded: dict[str, float] = {}  # master -> not waited on until (monotonic)
        self.warned: dict[str, float] = {}  # master -> last warning (monotonic)

    def client(self, config: ResultStoreConfig, **options: Any) -> Any:
        key = (os.getpid(), config.url, *sorted(options.items()))
        with self.lock:
            client = self.clients.get(key)
            if client is None:
                client = self.clients[key] = config.client(**options)
            return client


_shared = _Process()


_NO_PUBSUB = (
    "results on a Redis Cluster are read by key, not by pub/sub (AsyncResult.get): poll "
    "celery-task-meta-<id>, as producer.Client.wait does"
)


class _KeysOnly(ResultConsumer):  # type: ignore[misc]
    """Celery's pub/sub result consumer, for a store that publishes nothing: refuses to wait
    (AsyncResult.get) instead of waiting forever."""

    def start(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(_NO_PUBSUB)

    def on_wait_for_pending(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(_NO_PUBSUB)

    def drain_events(self, timeout: float | None = None) -> None:
        raise NotImplementedError(_NO_PUBSUB)

    def on_after_fork(self) -> None:
        self._reset_sync()

    def consume_from(self, task_id: str) -> None:
        pass

    def cancel_for(self, task_id: str) -> None:
        pass


class ClusterResultBackend(_AtomicStore, RedisBackend):  # type: ignore[misc]
    """worker/backend.py's atomic store on a `redis.cluster.RedisCluster` (module doc).

    `result_backend_transport_options`: `wait_replicas` (0: no WAIT), `wait_timeout_ms`,
    `socket_timeout`, `socket_connect_timeout`, and `global_keyprefix` as for Redis.
    """

    ResultConsumer = _KeysOnly
    publish_states = False
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, url: str | None = None, **kwargs: Any) -> None:
        self.store_config = ResultStoreConfig(url or "")
        self.store_config.validate()
        super().__init__(*args, url=url, **kwargs)
        # Failover errors count as connection errors: `ensure` and Celery's
        # `result_backend_always_retry` (exception_safe_to_retry) retry them.
        self.connection_errors = tuple(
            dict.fromkeys((*self.connection_errors, *result_store_errors()))
        )
        options = self._transport_options
        self.wait_replicas = int(options.get("wait_replicas", 1))
        self.wait_timeout_ms = int(options.get("wait_timeout_ms", 1000))
        self._sha = hashlib.sha1(STORE.encode()).hexdigest()
        #: Stores that went on without a replica's confirmation.
        self.unconfirmed = 0

    def _params_from_url(self, url: str, defaults: dict[str, Any]) -> dict[str, Any]:
        return dict(defaults)  # the cluster URL is ResultStoreConfig's to parse

    def as_uri(self, include_password: bool = False) -> str:
        return self.store_config.url if include_password else self.store_config.safe_url()

    @cached_property
    def client(self) -> Any:
        options = self._transport_options
        try:
            return _shared.client(
                self.store_config,
                socket_timeout=float(options.get("socket_timeout", 10.0)),
                socket_connect_timeout=float(options.get("socket_connect_timeout", 5.0)),
            )
        except rexc.RedisClusterException as exc:
            # No node answered to tell the slots: a connection error, retried like one (the
            # client is built again on the next access).
            raise rexc.ConnectionError(f"cannot reach the result store's cluster: {exc}") from exc

    @cached_property
    def retry_policy(self) -> dict[str, Any]:
        # `ensure`'s retries, the only ones a bulk store gets: long enough for a failover
        # (cluster-node-timeout plus an election), about a minute.
        policy: dict[str, Any] = {
            "max_retries": 60,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        }
        policy.update(self._transport_options.get("retry_policy", {}))
        return policy

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass  # nothing to subscribe to

    # -- the store ---------------------------------------------------------------------------

    def _store_entries(
        self, values: list[tuple[Any, Any, str]], notes: list[events.Note | None] | None = None
    ) -> int:
        """Each `(key, value, state)` by its own script call on its key's master, then WAIT
        there for final states; then the final ones are announced (`_announce`). Returns how
        many keys took the new state."""
        client = self.client
        stored = 0
        todo = list(values)
        codes: dict[Any, str] = {}
        token = self._intend(notes) if notes else None
        for _ in range(_MAX_ROUNDS):
            by_node: dict[str, tuple[Any, list[tuple[Any, Any, str]]]] = {}
            for entry in todo:
                node = client.get_node_from_key(entry[0])
                by_node.setdefault(node.name, (node, []))[1].append(entry)
            todo = []
            for node, entries in by_node.values():
                count, redirected = self._store_on_node(node, entries, codes=codes)
                stored += count
                todo += redirected
            if not todo:
                testing.kill_after_result(self.app)  # tests only: the outbox's reason to be
                if notes:
                    self._announce(values, notes, codes, token)
                return stored
            self._refresh()  # a slot moved: learn where
        raise rexc.TryAgainError("result slots kept moving; the store is retried")

    def recount(self, task_ids: list[str], request: Any = None) -> None:
        """Count in their groups the jobs a redelivered bulk message skips as finished: their
        stored states are stored again (a final state is kept as it is) and announced, and
        ACCOUNT counts those their group has not (a worker killed between the result's call
        and its group's). Jobs of no group are left alone. Best effort: the images' results
        are safe either way."""
        found = [
            (i, n)
            for i, n in zip(
                task_ids,
                events.notes([(i, None, states.SUCCESS) for i in task_ids], request),
                strict=True,
            )
            if n is not None and n.group
        ]
        if not found:
            return
        keys = [self.get_key_for_task(i) for i, _ in found]
        try:
            raws = mget(self.client, keys)
            again = [
                ((key, raw, state), note)
                for key, raw, (_, note) in zip(keys, raws, found, strict=True)
                if (state := state_of(raw)) in FINAL_STATES
            ]
            if again:
                self._store_entries([v for v, _ in again], [n for _, n in again])
        except result_store.ERRORS as exc:
            log.warning("cannot recount %d finished image(s) in their groups: %s", len(found), exc)

    def _intend(self, notes: list[events.Note | None]) -> str | None:
        """Before any result is stored: the outbox's intents for these final states and
        their groups (worker/outbox.py), on the stream's master. Returns this call's token
        (None: events are off, or the stream's name admits no outbox)."""
        key = outbox_key(self._events.stream)
        if key is None or not self._events.maxlen:
            return None
        token, now = outbox.new_token(), events.timestamp()
        args: list[str] = []
        for note in notes:
            if note is not None:
                # The fields but the state, which a sweep reads from the stored result.
                fields = events.fields("job", note, "", now)
                args += ["job:" + note.task_id, outbox.intent(token, now, fields)]
        for group in dict.fromkeys(n.group for n in notes if n is not None and n.group):
            args += ["group:" + group, outbox.intent(token, now)]
        if not args:
            return None
        self._outbox_intend(keys=[key], args=args)
        return token

    @cached_property
    def _outbox_intend(self) -> Any:
        return self.client.register_script(outbox.INTEND)

    @cached_property
    def _outbox_announce(self) -> Any:
        return self.client.register_script(outbox.ANNOUNCE)

    def _announce(
        self,
        values: list[tuple[Any, Any, str]],
        notes: list[events.Note | None],
        codes: dict[Any, str],
        token: str | None = None,
    ) -> None:
        """After the results are stored (and on a replica): each group's counters by one
        ACCOUNT call on the group's master, then the events by one ANNOUNCE call on the
        stream's master, which also settles this call's outbox intents (`token`), and those
        an earlier store of the same jobs left (worker/outbox.py): a job whose result was
        final already (a second run) is announced only where its group had not counted it,
        or where an earlier store of it never announced it."""
        stream = self._events
        due: list[tuple[events.Note, str]] = []
        by_group: dict[str, list[tuple[events.Note, str, bool]]] = {}
        for (key, _, _), note in zip(values, notes, strict=True):
            code = codes.get(key, "")
            if note is None or not code:
                continue
            fresh, state = code.startswith("+"), code.lstrip("+")
            if note.group:
                by_group.setdefault(note.group, []).append((note, state, fresh))
            elif fresh:
                due.append((note, state))
        now = events.timestamp()
        finished: list[tuple[str, list[Any]]] = []
        for group, jobs in by_group.items():
            args: list[Any] = [group, now, self._group_ttl()]
            for note, state, _ in jobs:
                args += [note.task_id, state]
            keys = stream.group_keys(group)
            reply = self._account(keys=keys, args=args)
            for (note, state, fresh), answer in zip(jobs, reply, strict=False):
                if int(answer) > 0 or (int(answer) < 0 and fresh):
                    due.append((note, state))
            if len(reply) > len(jobs):
                finished.append((group, list(reply[len(jobs) :])))
        key = outbox_key(stream.stream)
        if token is not None and key is not None:
            self._announce_outbox(values, notes, codes, due, finished, token, key, now)
            return
        if not stream.maxlen or not (due or finished):
            return
        pipe = self.client.pipeline(transaction=False)
        for note, state in due:
            pipe.xadd(stream.stream, events.fields("job", note, state, now), **self._trim())
        for group, summary in finished:
            pipe.xadd(stream.stream, group_fields(group, summary, now), **self._trim())
        pipe.execute()

    def _announce_outbox(
        self,
        values: list[tuple[Any, Any, str]],
        notes: list[events.Note | None],
        codes: dict[Any, str],
        due: list[tuple[events.Note, str]],
        finished: list[tuple[str, list[Any]]],
        token: str,
        key: str,
        now: str,
    ) -> None:
        """ANNOUNCE: the events due, and every intent of this call settled (worker/outbox.py).
        A job's fields go along even when its event is not due, for an earlier store's intent."""
        stream = self._events
        due_ids = {note.task_id for note, _ in due}
        args: list[Any] = [token, stream.maxlen]
        for (key_, _, _), note in zip(values, notes, strict=True):
            if note is None:
                continue
            state = codes.get(key_, "").lstrip("+")
            fields = outbox.flat(events.fields("job", note, state, now)) if state else ""
            args += ["job:" + note.task_id, "1" if note.task_id in due_ids else "0", fields]
        done = {group: summary for group, summary in finished}
        for group in dict.fromkeys(n.group for n in notes if n is not None and n.group):
            summary = done.get(group)
            fields = outbox.flat(group_fields(group, summary, now)) if summary else ""
            args += ["group:" + group, "1" if summary else "0", fields]
        self._outbox_announce(keys=[stream.stream, key], args=args)

    def _trim(self) -> dict[str, Any]:
        return {"maxlen": self._events.maxlen, "approximate": True}

    @cached_property
    def _account(self) -> Any:
        """ACCOUNT (worker/store_script.py), loaded where it is missing (a promoted replica)."""
        return self.client.register_script(ACCOUNT)

    def _store_on_node(
        self,
        node: Any,
        entries: list[tuple[Any, Any, str]],
        asking: bool = False,
        loaded: bool = False,
        codes: dict[Any, str] | None = None,
    ) -> tuple[int, list[tuple[Any, Any, str]]]:
        """One round trip to one master: the script per key, then WAIT when any state is
        final. Returns the keys stored and the entries to send elsewhere (MOVED, ASK)."""
        wait = self._replicas_to_wait(node, entries)
        pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
        codes = {} if codes is None else codes
        for key, value, state in entries:
            if asking:
                pipe.execute_command("ASKING")
            keys, args = self._script([(key, value, state)], announce=False)
            pipe.evalsha(self._sha, len(keys), *keys, *args)
        if wait:
            pipe.execute_command("WAIT", wait, self.wait_timeout_ms)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (rexc.ConnectionError, rexc.TimeoutError):
            self._refresh()  # the master may be gone: the retry asks who owns the slot now
            raise
        if asking:
            replies = [r for i, r in enumerate(replies) if i % 2 == 1 or i >= 2 * len(entries)]
        count = 0
        redirected: list[tuple[Any, Any, str]] = []
        unscripted: list[tuple[Any, Any, str]] = []
        asked: dict[str, tuple[Any, list[tuple[Any, Any, str]]]] = {}
        for entry, reply in zip(entries, replies, strict=False):
            if isinstance(reply, rexc.NoScriptError) and not loaded:
                unscripted.append(entry)
            elif isinstance(reply, rexc.MovedError | rexc.TryAgainError):
                redirected.append(entry)  # MovedError is an AskError: test it first
            elif isinstance(reply, rexc.AskError):
                target = self.client.nodes_manager.get_node(reply.host, reply.port)
                if target is None:
                    redirected.append(entry)
                else:
                    asked.setdefault(target.name, (target, []))[1].append(entry)
            elif isinstance(reply, Exception):
                raise reply  # CLUSTERDOWN, OOM, ...: `ensure` and `_while_full` decide
            else:
                count += int(reply[0])
                codes[entry[0]] = text(reply[1])
        if wait:
            self._confirmed(node, replies[-1], wait)
        if unscripted:
            # A promoted replica has no scripts cached: load it there and send those again.
            self.client.get_redis_connection(node).script_load(STORE)
            more, moved = self._store_on_node(node, unscripted, asking, True, codes)
            count += more
            redirected += moved
        for target, again in asked.values():
            more, moved = self._store_on_node(target, again, True, codes=codes)
            count += more
            redirected += moved
        return count, redirected

    def _replicas_to_wait(self, node: Any, entries: list[tuple[Any, Any, str]]) -> int:
        if self.wait_replicas <= 0 or not any(state in FINAL_STATES for _, _, state in entries):
            return 0
        until = _shared.degraded.get(node.name)
        if until is not None and time.monotonic() < until:
            return 0
        return self.wait_replicas

    def _confirmed(self, node: Any, reply: Any, wanted: int) -> None:
        if isinstance(reply, Exception):
            raise reply
        if int(reply) >= wanted:
            if _shared.degraded.pop(node.name, None) is not None:
                log.warning("result store: master %s confirms results to replicas again", node.name)
            return
        self.unconfirmed += 1
        now = time.monotonic()
        with _shared.lock:
            _shared.degraded[node.name] = now + DEGRADED_SECONDS
            last = _shared.warned.get(node.name)
            warn = last is None or now - last >= WARN_EVERY_SECONDS
            if warn:
                _shared.warned[node.name] = now
        if warn:
            log.warning(
                "result store: master %s confirmed a result to %d of %d replica(s) within "
                "%d ms (RESULT_WAIT_TIMEOUT_MS): going on without; its results are at risk "
                "until a replica syncs. Waiting on it again every %.0f s.",
                node.name,
                int(reply),
                wanted,
                self.wait_timeout_ms,
                DEGRADED_SECONDS,
            )

    def _refresh(self) -> None:
        """Ask the cluster which master owns which slots (best effort: during a failover no
        node may answer yet, and the retry will ask again)."""
        try:
            self.client.nodes_manager.initialize()
        except result_store.ERRORS as exc:
            log.debug("result store: cannot refresh the cluster's slots yet: %s", exc)
