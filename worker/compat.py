"""A workaround for a kombu 5.7 bug that made a worker exit when Redis restarted.

After a connection loss Celery collects the broken connection (which clears its transport's
client) and then closes it; closing the Redis channel tries to restore its unacknowledged
messages through that cleared client, raises AttributeError, and the worker stops with
"Unrecoverable error". Skipping that restore is safe: the messages are still in Redis's
`unacked` hash, and the visibility-timeout sweep of any live worker puts them back.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from worker import inbox

_original: Any = kombu_redis.QoS.restore_unacked_once


def _restore_unacked_once(self: Any, stderr: Any = None) -> Any:
    if getattr(self.channel.connection, "client", None) is None:
        return None  # connection already collected: left to the visibility-timeout sweep
    return _original(self, stderr)


def install() -> None:
    inbox.install()
    setattr(kombu_redis.QoS, "restore_unacked_once", _restore_unacked_once)  # noqa: B010
