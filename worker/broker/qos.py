"""Acknowledgements on the delivery layer: per-consumer unacked hashes instead of kombu's one.

A message is claimed into `unacked:<cid>` before Celery sees it (worker.broker.transport), so
`append` only keeps kombu's in-memory bookkeeping. An ack deletes the claim; a requeue puts the
message back at the head of its queue; a reject without requeue dead-letters it, as RabbitMQ's
dead-letter exchanges do. Messages of a dead consumer, or older than the visibility timeout,
are returned by the sweep (worker.broker.liveness), not by kombu's `restore_visible`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kombu.transport import virtual

log = logging.getLogger(__name__)


class QoS(virtual.QoS):
    """kombu's QoS over the channel's own Redis keys (see module doc)."""

    channel: Any

    def append(self, message: Any, delivery_tag: Any) -> None:
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        message = self._delivered.get(delivery_tag)
        if self._collected():
            _skip("ack", message)
        else:
            keys = self.channel.keys

            def settle() -> None:
                # No MULTI: both commands free memory, and a full Redis refuses every command
                # queued in a MULTI (an ack must still go through). A claim left in the ZSET
                # alone is harmless: the sweep skips tags without a message.
                with self.channel.raw_client().pipeline(transaction=False) as pipe:
                    pipe.hdel(keys.unacked, delivery_tag)
                    pipe.zrem(keys.unacked_at, delivery_tag)
                    pipe.execute()

            # Celery only logs an ack that raises: the message would stay claimed.
            self.channel.idempotent(settle)
        virtual.QoS.ack(self, delivery_tag)
        self.channel.settled(message)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        message = self._delivered.get(delivery_tag)
        if self._collected():
            _skip("reject", message)
        elif requeue:
            self.channel.requeue_unacked(delivery_tag)
        else:
            raw = json.dumps(getattr(message, "_raw", None) or {}).encode()
            self.channel.dead_letter_unacked(delivery_tag, raw, message)
        virtual.QoS.ack(self, delivery_tag)
        self.channel.settled(message)

    def restore_unacked(self) -> None:
        """Every delivered, unacknowledged message back to the head of its queue."""
        self._flush()
        for tag in list(self._delivered):
            self.channel.requeue_unacked(tag)
        self._delivered.clear()

    def restore_unacked_once(self, stderr: Any = None) -> None:
        # Channel.close returns what this consumer holds in one script; when the channel is
        # only garbage-collected, its heartbeat stops and the sweep returns them.
        self._on_collect.cancel()
        self._flush()
        self._delivered.clear()
        self._delivered.restored = True  # type: ignore[attr-defined]

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Done by the heartbeat thread's sweep (worker.broker.liveness)."""

    def _collected(self) -> bool:
        # A job that finishes after its connection was lost acks on the old, collected
        # channel; its claim stays in Redis and the sweep returns it once the old consumer
        # id stops beating.
        return getattr(self.channel.connection, "client", None) is None


def _skip(what: str, message: Any) -> None:
    task_id = (getattr(message, "headers", None) or {}).get("id")
    log.warning("cannot %s %s: its connection was lost; it will be redelivered", what, task_id)
