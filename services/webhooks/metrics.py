"""The dispatcher's Prometheus metrics (served only with METRICS_PORT): its own attempts, and
the backlog of every dispatcher, read from the result store at each scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from core.lifecycle import WEBHOOK_CONSUMER_GROUP
from core.text import text


class Metrics:
    """Prometheus metrics of this dispatcher."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = Counter(
            "imgqueue_webhook_attempts",
            "Webhook attempts by outcome: delivered, retry (failed, tried again), dead "
            "(failed for the last time), refused (SSRF policy or URL: never connected), "
            "tenant (its tenant no longer exists: never signed nor sent)",
            ["outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "imgqueue_webhook_attempt_seconds",
            "Time of one webhook attempt, connecting to the answer",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "imgqueue_webhook_in_flight", "Webhook attempts in progress", registry=self.registry
        )
        self.connections = Counter(
            "imgqueue_webhook_connections",
            "Connections made to receivers (kept alive between deliveries)",
            registry=self.registry,
        )


# The backlog's counts by where the work waits, and the age of the oldest; None when the
# result store cannot tell (the scrape goes on without them).
BacklogReader = Callable[[], tuple[dict[str, int], float] | None]


class Backlog:
    """The backlog gauges: what every dispatcher has yet to do, not only this one."""

    def __init__(self, read: BacklogReader) -> None:
        self.read = read

    def describe(self) -> list[Any]:
        return [self._count({}), self._age(0.0)]

    def collect(self) -> Iterator[Any]:
        found = self.read()
        if found is None:
            return
        counts, age = found
        yield self._count(counts)
        yield self._age(age)

    @staticmethod
    def _count(counts: dict[str, int]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "imgqueue_webhook_backlog",
            "Webhooks not yet delivered: `stream` events not yet moved to the retry set (unread,"
            " or read and not acknowledged), `due` deliveries due and not started, `later` in"
            " flight or waiting for a retry",
            labels=["where"],
        )
        for where, count in counts.items():
            family.add_metric([where], count)
        return family

    @staticmethod
    def _age(age: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "imgqueue_webhook_backlog_age_seconds",
            "How long the oldest waiting work has waited: an event not yet moved to the retry"
            " set, or a delivery due and not started (0: none)",
            value=age,
        )


def read_backlog(store: Any, stream: str, retries: str) -> tuple[dict[str, int], float]:
    """The backlog's counts (see Backlog) and the age of its oldest waiting work, from the
    events `stream`'s consumer group and the `retries` set."""
    now = time.time()
    oldest = now
    count = unread = 0
    try:
        groups = store.xinfo_groups(stream)
    except redis.ResponseError:  # no stream yet
        groups = []
    group = next((g for g in groups if text(g.get("name") or "") == WEBHOOK_CONSUMER_GROUP), None)
    if group is not None:
        last = text(group.get("last-delivered-id") or "") or "0-0"
        after = store.xrange(stream, min=last, count=2)
        first_unread = next((i for i, _ in after if text(i) != last), None)
        if first_unread is not None:
            oldest = min(oldest, _entry_time(first_unread))
        lag = group.get("lag")
        if lag is None and first_unread is not None:  # Redis before 7, or after a trim
            unread = len(store.xrange(stream, min=text(first_unread), count=10_000))
        else:
            unread = int(lag or 0)
        pending = store.xpending(stream, WEBHOOK_CONSUMER_GROUP)
        if pending.get("pending"):
            oldest = min(oldest, _entry_time(pending["min"]))
        count = unread + int(pending.get("pending") or 0)
    total = int(store.zcard(retries))
    due = int(store.zcount(retries, "-inf", now))
    first_due = store.zrangebyscore(retries, "-inf", now, start=0, num=1, withscores=True)
    if first_due:
        oldest = min(oldest, float(first_due[0][1]))
    counts = {"stream": count, "due": due, "later": total - due}
    return counts, max(now - oldest, 0.0)


def _entry_time(entry_id: Any) -> float:
    """A stream entry's time (its id's milliseconds), epoch seconds."""
    return int(text(entry_id).split("-", 1)[0]) / 1000.0
