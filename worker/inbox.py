"""Receiving messages from Redis without a window in which a killed worker loses one.

kombu's Redis transport takes a message with BRPOP, which removes it from the queue, and only
then records it in the `unacked` hash. A worker killed in between (and a busy worker keeps a
popped message unread in its socket until it has room for it) loses that message for good:
the job stays PENDING forever. Measured: about one job lost in every second SIGKILL under load.

Here the pop is BLMOVE into this process's own inbox list, so a popped message is always in
Redis. It leaves the inbox in the same transaction that records it as unacknowledged (the
hash kombu restores from after the visibility timeout). Each process keeps an `alive` key
fresh; any worker moves the inbox of a process whose key expired back to the queue,
atomically (a Lua script), so a message is recovered after a few seconds at most.
Applies to the redis:// and rediss:// transports with one queue; otherwise kombu's BRPOP runs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from worker import deliveries

log = logging.getLogger(__name__)

REGISTRY = "imgqueue-inboxes"  # hash: inbox list -> the queue it takes from
_SWEEP = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[4], 'RIGHT', 'RIGHT') do n = n + 1 end
redis.call('HDEL', KEYS[1], KEYS[2])
return n
"""


class InboxChannel(kombu_redis.Channel):
    """A kombu Redis channel whose consumer pops with BLMOVE into a per-process inbox."""

    _inbox: str | None = None
    _inbox_queue: str | None = None
    _inbox_beat = 0.0
    _inbox_item: bytes | None = None  # the message being delivered, still in the inbox

    def _single_queue(self) -> str | None:
        if len(self.active_queues) != 1 or self.global_keyprefix:
            return None
        return str(next(iter(self.active_queues)))

    def _brpop_start(self, timeout: float | None = None) -> None:
        queue = self._single_queue()
        if queue is None:
            self._inbox_queue = None
            return super()._brpop_start(timeout)  # type: ignore[no-any-return]
        if self._inbox is None:
            self._inbox = (
                f"imgqueue-inbox-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
        if self._inbox_queue != queue or time.monotonic() - self._inbox_beat > self._ttl() / 3:
            self._inbox_queue = queue
            self.inbox_tick()  # the alive key is fresh before anything can land in the inbox
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command(
            "BLMOVE", queue, self._inbox, "RIGHT", "LEFT", wait or 0
        )

    def _brpop_read(self, **options: Any) -> bool:
        queue, inbox = self._inbox_queue, self._inbox
        if queue is None or inbox is None:
            return bool(super()._brpop_read(**options))
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            # InboxQoS.append records it as unacked and takes it out of the inbox in one
            # transaction, so it is always in exactly one of the two.
            self._inbox_item = item
            self.connection._deliver(loads(bytes_to_str(item)), queue)
            if self._inbox_item is not None:  # not recorded through InboxQoS.append (no-ack)
                with self.conn_or_acquire() as client:
                    client.lrem(inbox, 1, item)
            return True
        finally:
            self._inbox_item = None
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _ttl(self) -> int:
        return 3 * max(1, int(self.unacked_restore_interval or 10))

    def inbox_tick(self) -> None:
        """Keep this process's inbox alive; return dead processes' inboxes to their queues."""
        if self._inbox is None or self._inbox_queue is None:
            return
        self._inbox_beat = time.monotonic()
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.hset(REGISTRY, self._inbox, self._inbox_queue)
            pipe.set(self._inbox + "-alive", "1", ex=self._ttl())
            pipe.execute()
            for inbox, queue in client.hgetall(REGISTRY).items():
                name = inbox.decode()
                if name == self._inbox:
                    continue
                keys = [REGISTRY, name, name + "-alive", queue.decode()]
                moved = client.eval(_SWEEP, len(keys), *keys)
                if moved and moved > 0:
                    log.warning("returned %d message(s) from dead worker inbox %s", moved, name)


class InboxQoS(kombu_redis.QoS):
    """Runs the inbox heartbeat and sweep on kombu's periodic unacked-restore timer, and
    tells the delivery gate when a job's message is settled (see deliveries.Gate)."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        channel = self.channel
        item, inbox = getattr(channel, "_inbox_item", None), getattr(channel, "_inbox", None)
        if item is None or inbox is None:
            return super().append(message, delivery_tag)  # type: ignore[no-any-return]
        channel._inbox_item = None
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        # kombu's own append (unacked index + hash), plus leaving the inbox, in one MULTI.
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, raw)
            pipe.lrem(inbox, 1, item)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        message = self._delivered.get(delivery_tag)
        if self._collected():
            _skip("ack", message)
        else:
            super().ack(delivery_tag)
        _settle(message)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        message = self._delivered.get(delivery_tag)
        if self._collected():
            _skip("reject", message)
        else:
            super().reject(delivery_tag, requeue=requeue)
        _settle(message)

    def _collected(self) -> bool:
        # A job that finishes after its connection was lost acks on the old, collected
        # channel; kombu 5.7 then raises AttributeError and the worker exits for good.
        return getattr(self.channel.connection, "client", None) is None

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        try:
            tick = getattr(self.channel, "inbox_tick", None)
            if tick is not None:
                tick()
        except self.channel.connection_errors as exc:
            log.debug("inbox sweep skipped: %r", exc)
        return super().restore_visible(*args, **kwargs)


def _skip(what: str, message: Any) -> None:
    task_id = (getattr(message, "headers", None) or {}).get("id")
    # The message stays in Redis's unacked set; the visibility sweep delivers it again.
    log.warning("cannot %s %s: its connection was lost; it will be redelivered", what, task_id)


def _settle(message: Any) -> None:
    task_id = (getattr(message, "headers", None) or {}).get("id")
    if task_id:
        deliveries.GATE.settled(str(task_id))


def install() -> None:
    """Make kombu's Redis transport use the inbox channel (worker processes only)."""
    InboxChannel.QoS = InboxQoS
    kombu_redis.Transport.Channel = InboxChannel
