"""A kombu Redis transport that never loses a message: reliable fetch, priorities, dead letters.

Selected by Celery's `broker_transport` (worker/celery_app.py), never by patching kombu:
`worker.broker:Transport` for redis://, rediss:// and unix://, `worker.broker:SentinelTransport`
for sentinel://. Producers publish with kombu's own transports (a plain LPUSH).

How a message travels (keys in core/keys.py, scripts in worker/broker/scripts.py):
1. Fetch. kombu's BRPOP removes a message before anything records it, so a worker killed with
   the reply in its socket loses it. Here one Lua call LMOVEs as many messages as the consumer
   has free prefetch slots (at most MAX_FETCH), highest priority first over every consumed
   queue, each into this consumer's inbox for its list. When all
   are empty it blocks with BLMOVE on the first queue's priority-0 list for POLL_INTERVAL, then
   looks at all of them again.
2. Check. The message must be a JSON envelope of a task this service runs, under the size cap
   (worker/broker/envelope.py); otherwise it moves to the dead-letter list with its reason.
3. Claim. One Lua call moves them from the inboxes into `unacked:<cid>`, each with its queue
   and a copy marked redelivered; only then are they delivered to Celery.
4. Ack deletes the claim (worker/broker/qos.py). A heartbeat thread keeps `<cid>` alive; when a
   process dies, any live worker returns its claims and inboxes to the head of their queues
   (worker/broker/liveness.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from queue import Empty
from typing import Any, TypeVar, cast

import redis
import redis.sentinel as redis_sentinel
from kombu.transport import redis as kombu_redis

from core import keys as layout
from core.deadletters import make_entry
from core.memory import is_out_of_memory
from worker.broker import compat, envelope, scripts
from worker.broker.liveness import Liveness
from worker.broker.qos import QoS

log = logging.getLogger(__name__)
T = TypeVar("T")

_OPTIONS = (
    "dead_worker_timeout",
    "poll_interval",
    "max_message_bytes",
    "dead_letter_limit",
    "known_tasks",
    "on_settled",
    "on_dead_letter",
    "on_event",
    "on_full",
    "is_paused",
)
_servers_checked: set[str] = set()
# Most messages one fetch moves (and one claim takes): a worker whose batch just finished
# fetches its freed prefetch slots in two round trips instead of two per message.
MAX_FETCH = 64


class Channel(kombu_redis.Channel):
    """kombu's Redis channel with the reliable fetch of this module's doc."""

    QoS = QoS  # type: ignore[assignment]
    from_transport_options = cast(Any, kombu_redis.Channel.from_transport_options + _OPTIONS)

    #: Seconds without a heartbeat after which a consumer counts as dead.
    dead_worker_timeout = 15.0
    #: Seconds an idle consumer blocks on its first queue before looking at all lists again.
    poll_interval = 0.5
    max_message_bytes = 1024 * 1024
    dead_letter_limit = 10_000
    #: Task names a task message may carry (plus Celery's own `celery.*`); None: any.
    known_tasks: tuple[str, ...] | None = None
    on_settled: Callable[[str], None] | None = None
    on_dead_letter: Callable[[str], None] | None = None
    on_event: Callable[[str, int], None] | None = None
    #: Told True when Redis refuses a fetch for lack of memory, False when a fetch goes through.
    on_full: Callable[[str, bool], None] | None = None
    #: While this says True, no new message is fetched (e.g. results cannot be stored).
    is_paused: Callable[[], bool] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        compat.check()
        super().__init__(*args, **kwargs)
        compat.check_channel(self)
        self._raw: redis.Redis | None = None
        self._check_server()
        self.cid = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.keys = layout.Keys(self.global_keyprefix or "", self.cid)
        self.rules = envelope.Rules(
            int(self.max_message_bytes),
            None if self.known_tasks is None else frozenset(self.known_tasks),
        )
        client = self.raw_client()
        self._claim = client.register_script(scripts.CLAIM)
        self._claim_many = client.register_script(scripts.CLAIM_MANY)
        self._requeue = client.register_script(scripts.REQUEUE)
        self._dead_letter_inbox = client.register_script(scripts.DEAD_LETTER_FROM_INBOX)
        self._dead_letter_unacked = client.register_script(scripts.DEAD_LETTER_UNACKED)
        self._release = client.register_script(scripts.RELEASE)
        self.liveness = Liveness(
            self,
            client,
            self.keys,
            float(self.dead_worker_timeout),
            float(self.visibility_timeout),
            self.on_event,
        )
        self._noack_queues: set[str] = set()
        self._known_inboxes: set[str] = set()  # inbox keys the heartbeat knows
        self._pending: tuple[str, list[tuple[str, str, str]]] | None = None
        self._blocking = False
        self._paused_until = 0.0
        self._full = False

    # -- connections -------------------------------------------------------------------------

    def raw_client(self) -> redis.Redis:
        """A client without kombu's key prefixing: our keys carry the prefix themselves."""
        if self._raw is None or self._raw.connection_pool is not self.pool:
            self._raw = redis.Redis(connection_pool=self.pool)
        return self._raw

    def _check_server(self) -> None:
        pool = self.pool
        service = getattr(pool, "service_name", None)
        kwargs = pool.connection_kwargs
        where = (
            f"the Sentinel master {service!r}"
            if service
            else f"{kwargs.get('host') or kwargs.get('path')}:{kwargs.get('port', '')}"
        )
        if where in _servers_checked:
            return
        compat.check_redis(self.raw_client().info("server"), where)
        _servers_checked.add(where)

    # -- consuming ---------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if "\n" in queue:
            raise ValueError(f"queue names cannot contain a newline: {queue!r}")
        if no_ack:
            self._noack_queues.add(queue)
        else:
            self._noack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _plan(self, queues: list[str] | None = None) -> list[tuple[str, str, str]]:
        """(queue, list key, inbox key) for every list consumed, highest priority first.

        Every list a kombu client can write (priorities 0-9, whatever its priority steps),
        not only this channel's steps: a sender's steps may differ from ours.
        """
        if queues is None:
            queues = self._queue_cycle.consume(len(self.active_queues))
        return [
            (queue, self.keys.queue_list(lst), self.keys.inbox(lst))
            for pri in layout.PRIORITY_STEPS
            for queue in queues
            for lst in (layout.queue_list(queue, pri),)
        ]

    def _brpop_start(self, timeout: float | None = None) -> None:
        if time.monotonic() < self._paused_until:
            return
        if self.is_paused is not None and self.is_paused():
            self._paused_until = time.monotonic() + 0.5
            return
        plan = self._plan()
        if not plan:
            return
        self._register(plan)
        connection = self.client.connection
        if self._blocking:
            first = str(self.active_queues[0])
            wake = next(p for p in plan if p[0] == first)  # its highest-priority list
            wait = min(float(self.poll_interval), timeout or self.brpop_timeout or 1)
            args: list[Any] = ["BLMOVE", wake[1], wake[2], "RIGHT", "LEFT", wait]
            self._pending = ("BLMOVE", [wake])
        else:
            keys = [k for _, lst, inbox in plan for k in (lst, inbox)]
            args = ["EVAL", scripts.FETCH, len(keys), *keys, self._room()]
            self._pending = ("EVAL", plan)
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        connection.send_command(*args)

    def _brpop_read(self, **options: Any) -> bool:
        pending, self._pending = self._pending, None
        try:
            if pending is None:
                raise Empty()
            command, plan = pending
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except self.ResponseError as exc:
                # E.g. a full Redis under noeviction: back off instead of spinning.
                full = is_out_of_memory(exc)
                if not (full and self._full):
                    log.warning("fetch refused by Redis, retrying in 1s: %s", exc)
                self._set_full(full)
                self._paused_until = time.monotonic() + 1.0
                raise Empty() from None
            self._set_full(False)
            if command == "EVAL":
                if not reply:
                    self._blocking = True
                    raise Empty()
                popped = [
                    (plan[int(i) - 1], item)
                    for i, item in zip(reply[::2], reply[1::2], strict=True)
                ]
            else:
                self._blocking = False
                if reply is None:
                    raise Empty()
                popped = [(plan[0], reply)]
            self._queue_cycle.rotate(popped[0][0][0])
            return self._deliver_popped(popped)
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    def _set_full(self, full: bool) -> None:
        if full != self._full:
            self._full = full
            if not full:
                log.warning("Redis takes new jobs again: fetching resumes")
            if self.on_full is not None:
                self.on_full("broker", full)

    def _room(self) -> int:
        """Messages one fetch may take: the free prefetch slots (1..MAX_FETCH)."""
        room = self.qos.can_consume_max_estimate()
        return max(1, min(MAX_FETCH, room if room is not None else MAX_FETCH))

    def _deliver_popped(self, popped: list[tuple[tuple[str, str, str], bytes]]) -> bool:
        """The messages of one fetch, `((queue, list, inbox), message)`: checked, claimed in
        one call, then delivered. Empty when none is left to deliver."""
        claims: list[tuple[str, str, dict[str, Any], list[Any]]] = []
        delivered = False
        for (queue, lst, inbox), item in popped:
            if queue not in self.connection._callbacks:
                continue  # no consumer any more; the heartbeat returns the inbox
            if queue in self._noack_queues:
                payload = self._take(queue, lst, inbox, item, no_ack=True)
                if payload is not None:
                    self.connection._deliver(payload, queue)
                    # Said, or a synchronous drain (a control command's replies) goes on
                    # waiting until its timeout with the reply in hand.
                    delivered = True
                continue
            try:
                payload = envelope.parse(item, self.rules, task_queue=True)
            except envelope.Junk as junk:
                self._dead_letter_popped(queue, lst, inbox, item, junk)
                continue
            tag, entry = self._claim_entry(lst, payload)
            claims.append((queue, inbox, payload, [item, tag, entry]))
        if claims:
            keys = [self.keys.unacked, self.keys.unacked_at, *(i for _, i, _, _ in claims)]
            args = [a for *_, triple in claims for a in triple]
            taken = self.idempotent(
                lambda: self._claim_many(keys=keys, args=args, client=self.raw_client())
            )
            for (queue, _, payload, _), ok in zip(claims, taken, strict=True):
                if ok:
                    self.connection._deliver(payload, queue)
                    delivered = True
        if not delivered:
            raise Empty()
        return True

    def _claim_entry(self, lst: str, payload: dict[str, Any]) -> tuple[str, str]:
        """A fresh delivery tag (ours: a sender's may be missing or reused), and the unacked
        value: the queue list and a copy of the message marked redelivered."""
        tag = uuid.uuid4().hex
        payload["properties"]["delivery_tag"] = tag
        return tag, layout.unacked_value(
            lst, json.dumps(_redelivered(payload), separators=(",", ":"))
        )

    def _take(
        self, queue: str, lst: str, inbox: str, item: bytes, *, no_ack: bool
    ) -> dict[str, Any] | None:
        """Check a popped message and claim it (or, without acks, just take it from the inbox).

        None when it was dead-lettered, or had already left the inbox (a sweep returned it to
        its queue meanwhile: it will be fetched again, by us or another worker).
        """
        try:
            payload = envelope.parse(item, self.rules, task_queue=not no_ack)
        except envelope.Junk as junk:
            self._dead_letter_popped(queue, lst, inbox, item, junk)
            return None
        client = self.raw_client()
        if no_ack:
            return payload if client.lrem(inbox, 1, item) else None  # type: ignore[arg-type]
        tag, entry = self._claim_entry(lst, payload)
        keys = [inbox, self.keys.unacked, self.keys.unacked_at]
        if not self.idempotent(
            lambda: self._claim(keys=keys, args=[item, tag, entry], client=client)
        ):
            log.debug("message left %s before its claim (returned by a sweep)", inbox)
            return None
        return payload

    def _register(self, plan: list[tuple[str, str, str]]) -> None:
        new = {inbox: lst for _, lst, inbox in plan if inbox not in self._known_inboxes}
        if new:
            # The heartbeat must know an inbox before anything can land in it.
            self.liveness.register(new)
            self._known_inboxes.update(new)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Synchronous get, with the same claim (kombu's would pop with RPOP)."""
        plan = self._plan([queue])
        self._register(plan)
        keys = [k for _, lst, inbox in plan for k in (lst, inbox)]
        reply = self.raw_client().eval(scripts.FETCH, len(keys), *keys)
        if not reply:
            return None
        _, lst, inbox = plan[int(reply[0]) - 1]
        payload = self._take(queue, lst, inbox, reply[1], no_ack=no_ack)
        if payload is None:
            return None
        message = self.Message(payload, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def idempotent(self, call: Callable[[], T]) -> T:
        """Run a Redis call that may safely run twice, once more if its connection was lost.

        A connection dropped between Redis running a claim or an ack and its reply leaves the
        message claimed with no one to deliver or acknowledge it: held, by a live consumer,
        until the visibility timeout. A second try on a fresh connection finishes the job.
        """
        try:
            return call()
        except self.connection_errors as exc:
            log.info("a Redis call lost its connection, trying once more: %s", exc)
            return call()

    # -- settling ----------------------------------------------------------------------------

    def requeue_unacked(self, tag: str) -> None:
        keys = [self.keys.unacked, self.keys.unacked_at]
        self.idempotent(lambda: self._requeue(keys=keys, args=[tag], client=self.raw_client()))

    def dead_letter_unacked(self, tag: str, raw: bytes, message: Any) -> None:
        queue = (getattr(message, "delivery_info", None) or {}).get("routing_key") or "?"
        entry = make_entry(
            raw,
            "rejected",
            "a worker rejected it without requeueing (e.g. an invalid task message)",
            queue=queue,
            list_key=queue,
            worker=self.cid,
        )
        keys = [self.keys.unacked, self.keys.unacked_at, self.keys.dead_letters]
        dropped = self.idempotent(
            lambda: self._dead_letter_unacked(
                keys=keys, args=[tag, entry, self.dead_letter_limit], client=self.raw_client()
            )
        )
        if int(dropped) >= 0:
            self._counted_dead_letter(queue, "rejected", "rejected by the worker", int(dropped))

    def _dead_letter_popped(
        self, queue: str, lst: str, inbox: str, item: bytes, junk: envelope.Junk
    ) -> None:
        entry = make_entry(
            item,
            junk.reason,
            junk.detail,
            queue=queue,
            list_key=lst[len(self.keys.prefix) :],
            worker=self.cid,
        )
        dropped = self._dead_letter_inbox(
            keys=[inbox, self.keys.dead_letters],
            args=[item, entry, self.dead_letter_limit],
            client=self.raw_client(),
        )
        if int(dropped) >= 0:
            self._counted_dead_letter(queue, junk.reason, junk.detail, int(dropped))

    def _counted_dead_letter(self, queue: str, reason: str, detail: str, dropped: int) -> None:
        log.warning(
            "dead-lettered a message from queue %r: %s (%s); see `imgqueue dead-letters list`",
            queue,
            reason,
            detail[:200],
        )
        if dropped:
            log.warning(
                "dead-letter list over DEAD_LETTER_LIMIT=%d: dropped its %d oldest entries",
                self.dead_letter_limit,
                dropped,
            )
        if self.on_dead_letter is not None:
            self.on_dead_letter(reason)

    def settled(self, message: Any) -> None:
        """A message was acknowledged or rejected: tell the worker (deliveries.Gate)."""
        task_id = (getattr(message, "headers", None) or {}).get("id")
        if task_id and self.on_settled is not None:
            self.on_settled(str(task_id))

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        if not self.closed:
            self.liveness.stop()
            if self._in_poll:
                # A fetch reply may be on its way: leave its message in the inbox, where the
                # release below finds it.
                try:
                    self.client.parse_response(self.client.connection, "EVAL")
                except Exception:
                    log.debug("dropped a pending fetch reply at close", exc_info=True)
                self._in_poll = None  # type: ignore[assignment]
                self._pending = None
            if self._known_inboxes:
                self._release_all()
        super().close()

    def _release_all(self) -> None:
        try:
            moved = int(
                self._release(
                    keys=[
                        self.keys.consumers,
                        self.keys.inboxes,
                        self.keys.unacked,
                        self.keys.unacked_at,
                    ],
                    args=[self.cid],
                    client=self.raw_client(),
                )
            )
        except (*self.connection_errors, self.ResponseError, AttributeError) as exc:
            log.info("consumer %s: messages left for the sweep (%s)", self.cid, exc)
            return
        if moved:
            log.info("consumer %s: returned %d message(s) to their queues", self.cid, moved)


def _redelivered(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy marked as kombu marks restored messages, so the worker treats it as a suspect."""
    marked = dict(payload)
    headers = dict(payload.get("headers") or {})
    headers["redelivered"] = True
    marked["headers"] = headers
    properties = dict(payload["properties"])
    info = dict(properties.get("delivery_info") or {})
    info["redelivered"] = True
    properties["delivery_info"] = info
    marked["properties"] = properties
    return marked


class Transport(kombu_redis.Transport):
    """The redis://, rediss:// and unix:// transport (see module doc)."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        compat.check()
        super().__init__(*args, **kwargs)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same channel, its connections made through Redis Sentinel.

    Every sentinel comes from the `sentinels` option, and the broker URL names only one: with
    a `;`-separated URL, kombu fails over by re-parsing the next URL, which would silently
    swap this transport for its own. redis-py's Sentinel already tries each sentinel in turn.
    """

    from_transport_options = cast(
        Any, kombu_redis.SentinelChannel.from_transport_options + _OPTIONS + ("sentinels",)
    )
    sentinels: list[tuple[str, int]] | None = None

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        params = self._connparams(asynchronous)
        params.pop("host", None)
        params.pop("port", None)
        sentinels = [(str(h), int(p)) for h, p in (self.sentinels or [])]
        if not sentinels:
            client = self.connection.client
            sentinels = [(client.hostname or "127.0.0.1", client.port or 26379)]
        manager = redis_sentinel.Sentinel(
            sentinels,
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        master = getattr(self, "master_name", None)
        if not master:
            raise ValueError("the 'master_name' transport option must be set for sentinel://")
        auth = {k: params[k] for k in ("username", "password") if k in params}
        return manager.master_for(master, redis.Redis, **auth).connection_pool


class SentinelTransport(Transport):
    """The sentinel:// transport (see module doc); needs the `master_name` option."""

    Channel = SentinelChannel
    default_port = 26379  # type: ignore[assignment]
