"""Admission control: a depth limit per queue, set once in Redis by an operator.

    imgqueue limits set celery 100000     # at most 100000 messages waiting in `celery`
    imgqueue limits get celery            # also: limits list, limits clear celery

Limits live in one hash, `<REDIS_KEY_PREFIX>imgqueue:limits` (field: the queue's name, value:
the most messages that may wait in it, its ten priority lists together). `Client.submit` and
`Client.submit_many` (so `imgqueue submit` too) check before sending anything: when the
queue's depth plus the messages about to be sent would pass the limit, the whole call is
refused with QueueFull and nothing is sent. Depth counts messages, as the exporter does: a
`classify` message is one image, a `classify_many` message up to its bulk size (64).

Cheap on purpose: a client reads a queue's limit at most once every LIMIT_TTL_S seconds (one
HGET), and reads the depth (ten LLENs in one round trip) only for a queue that has a limit. So a
new or changed limit reaches running clients within LIMIT_TTL_S. The limit is soft: producers
checking at the same moment can each be admitted and together pass it by what they send.
Clients that publish with Celery directly (`send_task`) are not checked at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from core.connections import RedisConfig
from core.errors import QueueFull
from core.keys import LIMITS_KEY
from core.text import text
from producer.queues import depth

log = logging.getLogger("imgqueue.producer")

LIMIT_TTL_S = 5.0


def limits_key(config: RedisConfig) -> str:
    """The hash holding every queue's limit: `<REDIS_KEY_PREFIX>imgqueue:limits`."""
    return config.key_prefix + LIMITS_KEY


def _limit(value: bytes | str | None) -> int | None:
    if value is None:
        return None
    shown = text(value)
    try:
        limit = int(shown)
    except ValueError:
        log.warning("ignoring a queue limit that is not a whole number: %r", shown)
        return None
    return limit if limit >= 0 else None


def get_limit(client: Any, config: RedisConfig, queue: str) -> int | None:
    """The most messages that may wait in `queue`, or None when it has no limit."""
    return _limit(client.hget(limits_key(config), queue))


def all_limits(client: Any, config: RedisConfig) -> dict[str, int]:
    """Every queue's limit, by queue name."""
    out: dict[str, int] = {}
    for field, value in client.hgetall(limits_key(config)).items():
        limit = _limit(value)
        if limit is not None:
            out[text(field)] = limit
    return dict(sorted(out.items()))


def set_limit(client: Any, config: RedisConfig, queue: str, limit: int) -> None:
    """At most `limit` messages may wait in `queue` (0: refuse every new message)."""
    if not queue:
        raise ValueError("a queue name is needed")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"a limit is a whole number of messages, 0 or more; got {limit!r}")
    client.hset(limits_key(config), queue, limit)


def clear_limit(client: Any, config: RedisConfig, queue: str) -> bool:
    """Remove `queue`'s limit; False when it had none."""
    return bool(client.hdel(limits_key(config), queue))


class Admission:
    """One client's check: refuses a submit that would take a queue past its limit."""

    def __init__(
        self,
        client: Any,
        config: RedisConfig,
        ttl: float = LIMIT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.config, self.ttl, self.clock = client, config, ttl, clock
        self._cache: dict[str, tuple[float, int | None]] = {}
        self._warned = False

    def limit(self, queue: str) -> int | None:
        """`queue`'s limit, read from Redis at most once every `ttl` seconds."""
        now = self.clock()
        cached = self._cache.get(queue)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        try:
            limit = get_limit(self.client, self.config, queue)
        except redis.exceptions.NoPermissionError:
            # An ACL from before limits existed: submitting must not stop working for it.
            if not self._warned:
                log.warning(
                    "this Redis user may not read %s: queue limits are not checked "
                    "(deploy/redis.conf's producer user may)",
                    limits_key(self.config),
                )
                self._warned = True
            limit = None
        self._cache[queue] = (now, limit)
        return limit

    def check(self, queue: str, messages: int) -> None:
        """Raise QueueFull when `messages` more would take `queue` past its limit."""
        limit = self.limit(queue)
        if limit is None:
            return
        waiting = depth(self.client, self.config, queue)
        if waiting + messages > limit:
            raise QueueFull(queue, waiting, limit, messages)
