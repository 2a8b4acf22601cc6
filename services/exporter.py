"""`python -m services.exporter`: the cluster's queue metrics, exported once, not once per worker.

Prometheus (or a KEDA `metrics-api` trigger) scrapes this one small process instead of
summing what every worker would report:

    imgqueue_queue_depth{queue}                 waiting, every priority list summed
    imgqueue_queue_depth_by_priority{queue,priority}
    imgqueue_jobs_in_flight{queue}              delivered to a worker, not yet acknowledged
    imgqueue_model_queue_depth{model,queue}     per registered model: its queue's depth
    imgqueue_model_jobs_in_flight{model,queue}  and its messages in flight
    imgqueue_dead_letters                       in the dead-letter list
    imgqueue_consumers{state="live"|"stale"}    worker channels by heartbeat
    imgqueue_redis_used_memory_bytes            INFO memory's used_memory
    imgqueue_redis_max_memory_bytes             its maxmemory (0: none set)
    imgqueue_result_store_used_memory_bytes{node}   where RESULT_URL puts results apart from
    imgqueue_result_store_max_memory_bytes{node}    the broker: each master's, a cluster's too
    imgqueue_exporter_up                        1 when the last scrape reached Redis

Models are the ones workers registered (core.models: one HGETALL per scrape), each with
its queue (`model.<name>`; `celery` for the default model); `model` is the label the workers'
`imgqueue_model_info` carries (the served name, or the architecture for the default model).

Also `/queues` (the same as JSON, with a `models` object keyed by that label, for KEDA's
metrics-api scaler) and `/healthz`. Settings come from the environment: REDIS_URL
(+ REDIS_SENTINEL_MASTER, REDIS_KEY_PREFIX), RESULT_URL (+ RESULT_SENTINEL_MASTER; only its
memory is read, never a result), and `ExporterSettings`: QUEUES (comma separated; queues a
live worker consumes and those of registered models are found by themselves), EXPORTER_PORT
(9809), EXPORTER_ADDR (0.0.0.0), DEAD_WORKER_TIMEOUT (15). It imports neither torch nor
Celery.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from core import models
from core.connections import RedisConfig, ResultStoreConfig
from core.endpoint import Endpoint
from core.settings import ReportSettings, SettingError, env, load
from producer import store_memory
from producer.queues import Snapshot, snapshot

log = logging.getLogger("imgqueue.exporter")


@dataclass(frozen=True)
class ExporterSettings(ReportSettings):
    """`python -m services.exporter`'s settings (besides where Redis is)."""

    exporter_port: int = env(9809, int, "`python -m services.exporter`'s port")
    exporter_addr: str = env("0.0.0.0", str, "`python -m services.exporter`'s interface")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.exporter_port <= 65535:
            raise SettingError("EXPORTER_PORT must be within 0..65535")


class QueueCollector:
    """Reads Redis on every scrape (a few pipelined round trips)."""

    #: The result store, where RESULT_URL puts results apart from the broker (else None).
    results: ResultStoreConfig | None = None
    _results_client: Any = None

    def __init__(self, client: Any, config: RedisConfig, queues: list[str], dead_after: float):
        self.client, self.config, self.queues, self.dead_after = client, config, queues, dead_after

    def registered(self) -> dict[str, dict[str, Any]]:
        """The registered models by served name (none where this user may not read them)."""
        try:
            return models.registered(self.client, self.config)
        except redis.exceptions.ResponseError as exc:  # an ACL without imgqueue:models
            log.warning("model registry not read: %s", exc)
            return {}

    def read(self, registered: dict[str, dict[str, Any]] | None = None) -> Snapshot:
        """The named queues, those live workers consume, and every registered model's."""
        queues = list(self.queues)
        for entry in (registered or {}).values():
            if entry["queue"] not in queues:
                queues.append(entry["queue"])
        return snapshot(self.client, self.config, queues, self.dead_after)

    def scrape(self) -> tuple[Snapshot, dict[str, dict[str, Any]]]:
        """The queues, and per registered model (by its `model` label) its queue's numbers."""
        registered = self.registered()
        snap = self.read(registered)
        return snap, per_model(snap, registered)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("imgqueue_exporter_up", "1 when the last scrape reached Redis")
        try:
            snap, by_model = self.scrape()
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
        model_depth = GaugeMetricFamily(
            "imgqueue_model_queue_depth",
            "Messages waiting for a registered model, all priorities",
            labels=["model", "queue"],
        )
        model_flight = GaugeMetricFamily(
            "imgqueue_model_jobs_in_flight",
            "A registered model's messages delivered, not yet acknowledged",
            labels=["model", "queue"],
        )
        for label, m in by_model.items():
            model_depth.add_metric([label, m["queue"]], m["depth"])
            model_flight.add_metric([label, m["queue"]], m["in_flight"])
        yield model_depth
        yield model_flight
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


def model_label(entry: dict[str, Any]) -> str:
    """The `model` label of a registry entry: as the workers' imgqueue_model_info has it."""
    return str(entry.get("model") or entry.get("name") or entry.get("arch") or "default")


def per_model(snap: Snapshot, registered: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model label: {name, queue, depth, in_flight}} for every registered model."""
    stats = {q.name: q for q in snap.queues}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in registered.items():
        q = stats.get(entry["queue"])
        out[model_label(entry)] = {
            "name": name,
            "queue": entry["queue"],
            "version": entry.get("version"),
            "depth": q.depth if q else 0,
            "in_flight": q.in_flight if q else 0,
        }
    return out


def queues_body(snap: Snapshot, by_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What `/queues` answers: the snapshot, plus `models` (KEDA reads `models.<label>.depth`
    for one model's workers, or `queues.<queue>.depth`)."""
    return {**snap.to_dict(), "models": by_model}


def routes(collector: QueueCollector) -> dict[str, Any]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def queues_json() -> tuple[int, bytes, str]:
        try:
            body = queues_body(*collector.scrape())
        except Exception as exc:
            return 503, json.dumps({"error": str(exc)}).encode(), "application/json"
        return 200, json.dumps(body, sort_keys=True).encode(), "application/json"

    return {
        "/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST),
        "/queues": queues_json,
        "/healthz": lambda: (200, b"ok\n", "text/plain; charset=utf-8"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.exporter", description=__doc__)
    try:
        settings = load(ExporterSettings)
    except SettingError as exc:
        parser.error(str(exc))
    parser.add_argument("--port", type=int, default=settings.exporter_port)
    parser.add_argument("--addr", default=settings.exporter_addr)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = RedisConfig.from_env()
    client = config.client(socket_connect_timeout=5, socket_timeout=5)
    collector = QueueCollector(client, config, list(settings.queues), settings.dead_worker_timeout)
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
