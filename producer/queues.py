"""How much work is waiting: queue depth over every priority list, messages in flight, dead
letters, live consumers, and Redis' memory (INFO memory). Read straight from the delivery
layer's keys (core/keys.py, docs/reliability.md).

One scrape costs O(queues + consumers) commands, never a SCAN of the keyspace: queues are the
ones named (QUEUES, default `celery`) plus every list a live worker consumes (each registers
its inboxes), and in-flight messages are read per live consumer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.connections import RedisConfig
from core.contract import DEFAULT_QUEUE
from core.keys import PRIORITY_STEPS, Keys, queue_of, unacked_list
from core.memory import MemoryInfo, read_memory
from core.settings import DeliverySettings
from core.text import text


@dataclass(frozen=True)
class QueueStats:
    name: str
    by_priority: dict[int, int]  # waiting messages per priority (0 highest)
    in_flight: int  # delivered to a worker, not yet acknowledged

    @property
    def depth(self) -> int:
        return sum(self.by_priority.values())


@dataclass(frozen=True)
class Snapshot:
    queues: list[QueueStats]
    dead_letters: int
    consumers: int  # live: heartbeat within `dead_after` seconds
    stale_consumers: int  # silent longer: their messages go back at the next sweep
    extra: dict[str, Any] = field(default_factory=dict)
    memory: MemoryInfo | None = None  # INFO memory; None where this user may not run INFO

    def to_dict(self) -> dict[str, Any]:
        return {
            "queues": {
                q.name: {
                    "depth": q.depth,
                    "in_flight": q.in_flight,
                    "by_priority": {str(p): n for p, n in q.by_priority.items() if n},
                }
                for q in self.queues
            },
            "dead_letters": self.dead_letters,
            "consumers": self.consumers,
            "stale_consumers": self.stale_consumers,
            "memory": self.memory.to_dict() if self.memory else None,
            **self.extra,
        }


def depth(client: Any, config: RedisConfig, queue: str) -> int:
    """Messages waiting in `queue`, every priority: ten LLENs in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for key in Keys(config.key_prefix).priority_lists(queue):
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


def live_workers(
    client: Any, config: RedisConfig, dead_after: float = DeliverySettings.dead_worker_timeout
) -> list[str]:
    """The worker processes with a fresh heartbeat, as `host-pid` (a consumer id is
    `host-pid-channel`, and one process may have several channels): who `imgqueue status`
    expects an answer from."""
    now_s, now_us = client.time()
    now = float(now_s) + float(now_us) / 1e6
    members = client.zrange(Keys(config.key_prefix).consumers, 0, -1, withscores=True)
    fresh = [text(cid) for cid, score in members if now - float(score) <= dead_after]
    return sorted({cid.rsplit("-", 1)[0] for cid in fresh})


def snapshot(
    client: Any,
    config: RedisConfig,
    queues: list[str] | tuple[str, ...] = (DEFAULT_QUEUE,),
    dead_after: float = DeliverySettings.dead_worker_timeout,
) -> Snapshot:
    """The state of every queue named or consumed, in a few round trips."""
    prefix = config.key_prefix
    keys = Keys(prefix)
    now_s, now_us = client.time()
    now = float(now_s) + float(now_us) / 1e6
    members = client.zrange(keys.consumers, 0, -1, withscores=True)
    live = [(text(cid), score) for cid, score in members if now - float(score) <= dead_after]
    with client.pipeline(transaction=False) as pipe:
        for cid, _ in members:
            pipe.hgetall(keys.of(text(cid)).inboxes)
            pipe.hvals(keys.of(text(cid)).unacked)
        per_consumer = pipe.execute()
    names = dict.fromkeys(queues)
    flight: Counter[str] = Counter()
    inboxes: list[tuple[str, str]] = []
    for inbox_map, claims in zip(per_consumer[::2], per_consumer[1::2], strict=True):
        for inbox, source in inbox_map.items():
            queue = queue_of(text(source), prefix)
            if queue.endswith(".pidbox"):
                continue  # the replies of `celery inspect`, not work
            names.setdefault(queue)
            inboxes.append((text(inbox), queue))
        for value in claims:
            flight[queue_of(unacked_list(text(value)), prefix)] += 1
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            for key in keys.priority_lists(name):
                pipe.llen(key)
        for inbox, _queue in inboxes:
            pipe.llen(inbox)
        pipe.llen(keys.dead_letters)
        counts = pipe.execute()
    steps = len(PRIORITY_STEPS)
    for i, (_inbox, queue) in enumerate(inboxes):
        flight[queue] += int(counts[len(names) * steps + i])
    stats = [
        QueueStats(
            name,
            {p: int(counts[q * steps + j]) for j, p in enumerate(PRIORITY_STEPS)},
            flight[name],
        )
        for q, name in enumerate(names)
    ]
    return Snapshot(
        stats, int(counts[-1]), len(live), len(members) - len(live), memory=read_memory(client)
    )
