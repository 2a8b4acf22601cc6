"""`python -m worker.exporter`: the cluster's queue metrics, exported once, not once per worker.

Prometheus (or a KEDA `metrics-api` trigger) scrapes this one small process instead of
summing what every worker would report:

    imgqueue_queue_depth{queue}                 waiting, every priority list summed
    imgqueue_queue_depth_by_priority{queue,priority}
    imgqueue_jobs_in_flight{queue}              delivered to a worker, not yet acknowledged
    imgqueue_dead_letters                       in the dead-letter list
    imgqueue_consumers{state="live"|"stale"}    worker channels by heartbeat
    imgqueue_redis_used_memory_bytes            INFO memory's used_memory
    imgqueue_redis_max_memory_bytes             its maxmemory (0: none set)
    imgqueue_result_store_used_memory_bytes{node}   where RESULT_URL puts results apart from
    imgqueue_result_store_max_memory_bytes{node}    the broker: each master's, a cluster's too
    imgqueue_exporter_up                        1 when the last scrape reached Redis

Also `/queues` (the same as JSON, for KEDA's metrics-api scaler) and `/healthz`. Settings come
from the environment: REDIS_URL (+ REDIS_SENTINEL_MASTER, REDIS_KEY_PREFIX), RESULT_URL
(+ RESULT_SENTINEL_MASTER; only its memory is read, never a result), QUEUES (comma
separated; queues a live worker consumes are found by themselves), EXPORTER_PORT (9809),
EXPORTER_ADDR (0.0.0.0), DEAD_WORKER_TIMEOUT (15). It imports neither torch nor Celery.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from producer import store_memory
from producer.connections import RedisConfig, ResultStoreConfig
from producer.queues import Snapshot, snapshot
from worker.endpoint import Endpoint

log = logging.getLogger("imgqueue.exporter")


class QueueCollector:
    """Reads Redis on every scrape (a few pipelined round trips)."""

    #: The result store, where RESULT_URL puts results apart from the broker (else None).
    results: ResultStoreConfig | None = None
    _results_client: Any = None

    def __init__(self, client: Any, config: RedisConfig, queues: list[str], dead_after: float):
        self.client, self.config, self.queues, self.dead_after = client, config, queues, dead_after

    def read(self) -> Snapshot:
        return snapshot(self.client, self.config, self.queues, self.dead_after)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("imgqueue_exporter_up", "1 when the last scrape reached Redis")
        try:
            snap = self.read()
        except Exception as exc:  # Redis down: say so, keep serving
            log.warning("scrape failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "imgqueue_queue_depth", "Messages waiting, all priorities", labels=["queue"]
        )
        by_pri = GaugeMetricFamily(
            "imgqueue_queue_depth_by_priority",
            "Messages waiting per priority (0 highest)",
            labels=["queue", "priority"],
        )
        flight = GaugeMetricFamily(
            "imgqueue_jobs_in_flight", "Delivered, not yet acknowledged", labels=["queue"]
        )
        for q in snap.queues:
            depth.add_metric([q.name], q.depth)
            flight.add_metric([q.name], q.in_flight)
            for priority, count in q.by_priority.items():
                by_pri.add_metric([q.name, str(priority)], count)
        yield depth
        yield by_pri
        yield flight
        dead = GaugeMetricFamily("imgqueue_dead_letters", "Messages in the dead-letter list")
        dead.add_metric([], snap.dead_letters)
        yield dead
        consumers = GaugeMetricFamily(
            "imgqueue_consumers", "Worker channels by heartbeat", labels=["state"]
        )
        consumers.add_metric(["live"], snap.consumers)
        consumers.add_metric(["stale"], snap.stale_consumers)
        yield consumers
        # No samples where this Redis user may not run INFO.
        used = GaugeMetricFamily(
            "imgqueue_redis_used_memory_bytes", "Redis memory in use (INFO memory used_memory)"
        )
        most = GaugeMetricFamily(
            "imgqueue_redis_max_memory_bytes", "Redis maxmemory in bytes (0: no limit)"
        )
        if snap.memory is not None:
            used.add_metric([], snap.memory.used_memory)
            most.add_metric([], snap.memory.maxmemory)
        yield used
        yield most
        yield from self._result_store()

    def _result_store(self) -> Iterator[GaugeMetricFamily]:
        """Each result store master's memory (no samples unless RESULT_URL is apart)."""
        used = GaugeMetricFamily(
            "imgqueue_result_store_used_memory_bytes",
            "Memory in use on each master of the result store (RESULT_URL)",
            labels=["node"],
        )
        most = GaugeMetricFamily(
            "imgqueue_result_store_max_memory_bytes",
            "maxmemory of each master of the result store (0: no limit)",
            labels=["node"],
        )
        if self.results is not None:
            try:
                if self._results_client is None:  # connects: a cluster is asked its slots
                    self._results_client = self.results.client(
                        socket_connect_timeout=5, socket_timeout=5
                    )
                nodes = store_memory.read(self._results_client)
            except Exception as exc:  # the store down: no samples, keep serving
                log.warning("result store scrape failed: %s", exc)
                nodes = []
            for node in nodes:
                if node.memory is not None:
                    used.add_metric([node.node], node.memory.used_memory)
                    most.add_metric([node.node], node.memory.maxmemory)
        yield used
        yield most


def routes(collector: QueueCollector) -> dict[str, Any]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def queues_json() -> tuple[int, bytes, str]:
        try:
            body = collector.read().to_dict()
        except Exception as exc:
            return 503, json.dumps({"error": str(exc)}).encode(), "application/json"
        return 200, json.dumps(body, sort_keys=True).encode(), "application/json"

    return {
        "/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST),
        "/queues": queues_json,
        "/healthz": lambda: (200, b"ok\n", "text/plain; charset=utf-8"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.exporter", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("EXPORTER_PORT", 9809)))
    parser.add_argument("--addr", default=os.environ.get("EXPORTER_ADDR", "0.0.0.0"))
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = RedisConfig.from_env()
    queues = [q.strip() for q in os.environ.get("QUEUES", "celery").split(",") if q.strip()]
    dead_after = float(os.environ.get("DEAD_WORKER_TIMEOUT", "15"))
    client = config.client(socket_connect_timeout=5, socket_timeout=5)
    collector = QueueCollector(client, config, queues, dead_after)
    results = ResultStoreConfig.from_env(broker=config)
    if store_memory.apart(results, config):
        collector.results = results
    endpoint = Endpoint(ns.addr, ns.port, routes(collector))
    port = endpoint.start()
    log.info(
        "exporting queue metrics of %s on http://%s:%d/metrics", config.safe_url(), ns.addr, port
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    endpoint.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
