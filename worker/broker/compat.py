"""The kombu and Celery internals this transport extends, checked once at start-up.

worker/broker subclasses kombu's Redis channel, its QoS and its poller protocol. Those are
internals, not API: pyproject.toml pins celery and kombu to the minor versions the tests ran
on, and `check()` refuses to start, naming the versions, when what we extend is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import celery
import kombu
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from core.keys import PRIORITY_SEPARATOR

log = logging.getLogger(__name__)

TESTED = {"kombu": (5, 7), "celery": (5, 7)}
MIN_REDIS = (7, 0)  # BLMOVE, LMOVE; scripts that run when Redis is full (allow-oom)

# (object, attribute) pairs the transport overrides or calls.
_EXTENDED: list[tuple[Any, str]] = [
    (kombu_redis.Channel, "_brpop_start"),
    (kombu_redis.Channel, "_brpop_read"),
    (kombu_redis.Channel, "sep"),
    (kombu_redis.Channel, "_in_poll"),
    (kombu_redis.Channel, "_brpop_sent_at"),
    (kombu_redis.Channel, "_flush_brpop_reauth"),
    (kombu_redis.Channel, "from_transport_options"),
    (kombu_redis.Channel, "global_keyprefix"),
    (kombu_redis.Channel, "pool"),
    (kombu_redis.Channel, "active_queues"),
    (kombu_redis.Channel, "basic_consume"),
    (kombu_redis.Channel, "_restore"),
    (kombu_redis.SentinelChannel, "_sentinel_managed_pool"),
    (kombu_redis.Transport, "Channel"),
    (kombu_redis.MultiChannelPoller, "_register_BRPOP"),
    (virtual.QoS, "append"),
    (virtual.QoS, "_flush"),
    (virtual.QoS, "restore_unacked_once"),
    (virtual.Channel, "basic_get"),
    (virtual.Transport, "_deliver"),
    (virtual.Transport, "_callbacks"),
]

_checked = False


class BrokerIncompatible(Exception):
    """Raised when kombu, Celery or the Redis server lacks what the transport needs."""


def versions() -> str:
    return f"kombu {kombu.__version__}, celery {celery.__version__}"


def _tested() -> str:
    return ", ".join(f"{name} {'.'.join(map(str, v))}.x" for name, v in TESTED.items())


def check() -> None:
    """Once per process: the internals exist (else BrokerIncompatible); warn on other versions."""
    global _checked
    if _checked:
        return
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in _EXTENDED
        if not _has(owner, name)
    ]
    if missing:
        raise BrokerIncompatible(
            f"worker.broker extends kombu internals that {versions()} lacks "
            f"({', '.join(missing)}); it was tested with {_tested()}. Install those "
            "(pip install -e '.[worker]' keeps the pins) or port worker/broker and re-run "
            "tests/*/test_delivery*.py."
        )
    if kombu_redis.Channel.sep != PRIORITY_SEPARATOR:
        # Producers' kombu names priority lists with its `sep`; core/keys.py with ours.
        raise BrokerIncompatible(
            f"kombu's priority list separator is {kombu_redis.Channel.sep!r}, core/keys.py "
            f"expects {PRIORITY_SEPARATOR!r} ({versions()}; tested with {_tested()})"
        )
    found = {"kombu": kombu.VERSION[:2], "celery": celery.VERSION[:2]}
    if any(tuple(found[name]) != tested for name, tested in TESTED.items()):
        log.warning(
            "worker.broker was tested with %s, this is %s: run tests/*/test_delivery*.py",
            _tested(),
            versions(),
        )
    _checked = True


def _has(owner: Any, name: str) -> bool:
    return hasattr(owner, name)


# Set in __init__, so checked on the first channel made (see check_channel).
_INSTANCE = {"channel": ("_queue_cycle", "connection", "client"), "qos": ("_delivered", "_dirty")}


def check_channel(channel: Any) -> None:
    """The instance attributes the transport uses exist on a new channel and its QoS."""
    owners = {"channel": channel, "qos": channel.qos}
    missing = [
        f"{kind}.{name}"
        for kind, names in _INSTANCE.items()
        for name in names
        if not hasattr(owners[kind], name)
    ]
    if missing:
        raise BrokerIncompatible(
            f"worker.broker uses kombu internals that {versions()} lacks ({', '.join(missing)});"
            f" it was tested with {_tested()}."
        )


def check_redis(info: dict[str, Any], where: str) -> None:
    """BrokerIncompatible unless the server's INFO says Redis 7.0 or newer."""
    version = str(info.get("redis_version", "0"))
    try:
        found = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        found = (0, 0)
    if found < MIN_REDIS:
        raise BrokerIncompatible(
            f"Redis {'.'.join(map(str, MIN_REDIS))} or newer is needed "
            f"(BLMOVE, LMOVE, script flags); {where} runs Redis {version}. Upgrade Redis; "
            "nothing else can keep the no-loss guarantee."
        )
