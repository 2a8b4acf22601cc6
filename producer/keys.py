"""The delivery layer's Redis key layout and priority lists: the one place that names them.

Workers (worker/broker), producers (queues, dead letters, status) and the exporter build every
key of the delivery layer here. The Lua scripts in worker/broker/scripts.py build the
per-consumer keys again in Lua (`P .. 'unacked:' .. cid`, with P = `Keys.base`) and split
unacked values on their first newline: they must follow this layout.

Keys, each after `<REDIS_KEY_PREFIX>imgqueue:` (docs/reliability.md has the full table):

    consumers            ZSET  consumer id -> its last heartbeat (Redis server time)
    inboxes:<cid>        HASH  inbox list -> the queue list it takes from
    inbox:<cid>:<list>   LIST  messages popped from <list>, not yet claimed (normally 0 or 1)
    unacked:<cid>        HASH  delivery tag -> "<queue list>\\n<message marked redelivered>"
    unacked-at:<cid>     ZSET  delivery tag -> delivery time (server time, whole seconds)
    dead-letters         LIST  producer.deadletters entries, newest first
    sweep-lock           STRING  one sweep per interval across all workers

Queue lists are kombu's, after REDIS_KEY_PREFIX only: one list per priority, `<queue>` for 0
and `<queue>\\x06\\x16<n>` for n = 1..9.

Importing this needs nothing beyond the standard library (a producer-only install).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Priorities, as Celery and kombu store them on Redis: 0 is the HIGHEST, 9 the lowest, and a
# message without one counts as 0. kombu clamps every priority to 0..9 and names the list
# after the step it falls in; workers take from the lists highest first.
PRIORITY_STEPS = tuple(range(10))
MIN_PRIORITY, MAX_PRIORITY = PRIORITY_STEPS[0], PRIORITY_STEPS[-1]
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Channel.sep (worker.broker.compat checks it)

BROKER_KEY_PREFIX = "imgqueue:"
DEAD_LETTERS_KEY = BROKER_KEY_PREFIX + "dead-letters"
CONSUMERS_KEY = BROKER_KEY_PREFIX + "consumers"


def queue_list(queue: str, priority: int) -> str:
    """The Redis list holding `queue`'s messages of one priority (before any key prefix)."""
    return f"{queue}{PRIORITY_SEPARATOR}{priority}" if priority else queue


def priority_lists(queue: str, prefix: str = "") -> list[str]:
    """The ten lists holding `queue`'s waiting messages, priority 0 (highest) first."""
    return [prefix + queue_list(queue, priority) for priority in PRIORITY_STEPS]


def queue_of(list_key: str, prefix: str = "") -> str:
    """The queue a list belongs to: `celery\\x06\\x163` -> `celery`."""
    name = list_key[len(prefix) :] if prefix and list_key.startswith(prefix) else list_key
    return name.split(PRIORITY_SEPARATOR, 1)[0]


def unacked_value(list_key: str, message: str) -> str:
    """A claim's value in `unacked:<cid>`: the list it goes back to, a newline, the message
    (JSON has no raw newline, and queue names carry none)."""
    return list_key + "\n" + message


def unacked_list(value: str) -> str:
    """The list key an unacked value goes back to (see `unacked_value`)."""
    return value.split("\n", 1)[0]


@dataclass(frozen=True)
class Keys:
    """Key names under one key prefix, and for one consumer id where `cid` is given."""

    prefix: str = ""  # REDIS_KEY_PREFIX (kombu's global_keyprefix), may be ""
    cid: str = ""

    def of(self, cid: str) -> Keys:
        """The same prefix, another consumer's keys."""
        return replace(self, cid=cid)

    @property
    def base(self) -> str:
        """`<prefix>imgqueue:`, what the Lua scripts call P."""
        return self.prefix + BROKER_KEY_PREFIX

    @property
    def consumers(self) -> str:
        return self.prefix + CONSUMERS_KEY

    @property
    def inboxes(self) -> str:
        return f"{self.base}inboxes:{self.cid}"

    def inbox(self, queue_list: str) -> str:
        return f"{self.base}inbox:{self.cid}:{queue_list}"

    @property
    def unacked(self) -> str:
        return f"{self.base}unacked:{self.cid}"

    @property
    def unacked_at(self) -> str:
        return f"{self.base}unacked-at:{self.cid}"

    @property
    def dead_letters(self) -> str:
        return self.prefix + DEAD_LETTERS_KEY

    @property
    def sweep_lock(self) -> str:
        return self.base + "sweep-lock"

    def queue_list(self, name: str) -> str:
        """A queue list's real key: kombu prefixes them with global_keyprefix."""
        return self.prefix + name

    def priority_lists(self, queue: str) -> list[str]:
        """The real keys of `queue`'s ten lists, priority 0 (highest) first."""
        return priority_lists(queue, self.prefix)
