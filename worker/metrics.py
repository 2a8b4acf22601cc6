"""Prometheus metrics for one worker process, served over HTTP on METRICS_PORT (0: off).

Each `Metrics` has its own registry (with the process, platform and GC collectors), so two
apps in one process (a benchmark's, say) never collide and importing this module registers
nothing.

The same small server (core/endpoint.py, bounded: one thread, timeouts, a connection cap)
answers `/ready` (200 once the model is loaded and warmed up, else 503) and `/healthz` (200
while the process runs), so a container needs one port for both.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.exposition import generate_latest

from core.endpoint import Endpoint, Route

log = logging.getLogger(__name__)

# Seconds: from a cache hit (sub-millisecond) up to a slow fetch or a big CPU batch.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_QUEUE_WAIT = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RATE_WINDOW_S = 60.0
# imgqueue_model_info's labels: keys of the model's describe(); join on it to split any worker
# metric by model: `... * on (job, instance) group_left (model) imgqueue_model_info`.
MODEL_LABELS = ("model", "arch", "version", "weights", "labels")


class Metrics:
    """The metrics of one worker process: made by the process-start hook, kept in its context."""

    def __init__(self) -> None:
        # One declaration per metric, in the order /metrics lists them: long, but a list that
        # reads whole (the series a dashboard may use) rather than split by an arbitrary cut.
        self.registry = registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)

        self.jobs = Counter(
            "imgqueue_jobs_total",
            "Jobs finished by this worker, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "imgqueue_job_failures_total",
            "Failed jobs by error type",
            ["error_type"],
            registry=registry,
        )
        self.cache = Counter(
            "imgqueue_result_cache_lookups_total",
            "Result cache lookups",
            ["result"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "imgqueue_queue_wait_seconds",
            "Time from submit to a worker starting the job",
            buckets=_QUEUE_WAIT,
            registry=registry,
        )
        self.stage = {
            stage: Histogram(
                f"imgqueue_{stage}_seconds",
                f"Per-job {stage} time",
                buckets=_LATENCY,
                registry=registry,
            )
            for stage in ("fetch", "preprocess", "inference")
        }
        self.job_duration = Histogram(
            "imgqueue_job_duration_seconds",
            "Per-job time inside the worker",
            buckets=_LATENCY,
            registry=registry,
        )
        self.batch_size = Histogram(
            "imgqueue_batch_size", "Images per inference batch", buckets=_BATCH, registry=registry
        )
        self.batch_seconds = Histogram(
            "imgqueue_batch_inference_seconds",
            "Model time per inference batch",
            buckets=_LATENCY,
            registry=registry,
        )
        self.images = Counter(
            "imgqueue_images_inferred_total", "Images run through the model", registry=registry
        )
        self.images_per_second_gauge = Gauge(
            "imgqueue_images_per_second",
            f"Images inferred per second over the last {_RATE_WINDOW_S:g}s",
            registry=registry,
        )
        self.images_per_second_gauge.set_function(self.images_per_second)
        self.dead_letters = Counter(
            "imgqueue_dead_lettered_total",
            "Messages this worker moved to the dead-letter list, by reason",
            ["reason"],
            registry=registry,
        )
        self.returned = Counter(
            "imgqueue_messages_returned_total",
            "Messages this worker returned to their queues, by why (dead consumer, lost "
            "reply, visibility timeout)",
            ["why"],
            registry=registry,
        )
        self.model_load = Gauge(
            "imgqueue_model_load_seconds", "Time to load and warm up the model", registry=registry
        )
        self.ready = Gauge(
            "imgqueue_ready", "1 once the model is loaded and warmed up", registry=registry
        )
        self.model_info = Gauge(
            "imgqueue_model_info",
            "1 for the model this worker serves: its name (or architecture, for the default "
            "model), architecture, version, weights and label set",
            MODEL_LABELS,
            registry=registry,
        )
        self.model_backend = Gauge(
            "imgqueue_model_backend",
            '1 for the backend the model runs on (torch, onnxruntime); fallback="true" where '
            "ONNX Runtime was wanted but torch runs (a failed export or check, the log says why)",
            ["backend", "fallback"],
            registry=registry,
        )
        self.redis_full = Gauge(
            "imgqueue_redis_full",
            "1 while Redis refuses this worker's writes for lack of memory (it fetches no jobs)",
            ["store"],
            registry=registry,
        )
        self._lock = threading.Lock()
        self._batches: collections.deque[tuple[float, int]] = collections.deque()
        self._finished: collections.deque[float] = collections.deque()
        self._server: Endpoint | None = None

    def images_per_second(self) -> float:
        cutoff = time.monotonic() - _RATE_WINDOW_S
        with self._lock:
            while self._batches and self._batches[0][0] < cutoff:
                self._batches.popleft()
            return sum(n for _, n in self._batches) / _RATE_WINDOW_S

    def jobs_last_minute(self) -> int:
        """Jobs this process finished (any outcome) in the last 60 s."""
        cutoff = time.monotonic() - _RATE_WINDOW_S
        with self._lock:
            while self._finished and self._finished[0] < cutoff:
                self._finished.popleft()
            return len(self._finished)

    def observe_batch(self, size: int, seconds: float) -> None:
        """The batcher's `on_batch` callback."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)
        with self._lock:
            self._batches.append((time.monotonic(), size))

    def observe_job(
        self,
        outcome: str,
        error_type: str | None,
        queue_wait: float | None,
        timings_ms: Mapping[str, Any] | None,
        cached: bool | None,
    ) -> None:
        self.jobs.labels(outcome=outcome).inc()
        with self._lock:
            self._finished.append(time.monotonic())
        if error_type:
            self.failures.labels(error_type=error_type).inc()
        if queue_wait is not None:
            self.queue_wait.observe(queue_wait)
        if cached is not None:
            self.cache.labels(result="hit" if cached else "miss").inc()
        for stage, histogram in self.stage.items():
            value = (timings_ms or {}).get(stage)
            if isinstance(value, int | float):
                histogram.observe(value / 1000.0)
        total = (timings_ms or {}).get("total")
        if isinstance(total, int | float):
            self.job_duration.observe(total / 1000.0)

    def set_model(self, description: Mapping[str, Any]) -> None:
        """Publish `imgqueue_model_info` for the loaded model (its describe())."""
        self.model_info.clear()
        values = [str(description.get(label) or "") for label in MODEL_LABELS]
        self.model_info.labels(*values).set(1)
        self.model_backend.clear()
        fallback = "true" if description.get("backend_fallback") else "false"
        self.model_backend.labels(str(description.get("backend") or ""), fallback).set(1)

    def observe_dead_letter(self, reason: str) -> None:
        """The transport's `on_dead_letter` hook."""
        self.dead_letters.labels(reason=reason).inc()

    def observe_broker_event(self, event: str, count: int) -> None:
        """The transport's `on_event` hook: messages returned to their queues, and why."""
        if event.startswith("returned_"):
            self.returned.labels(why=event.removeprefix("returned_")).inc(count)

    def routes(self, is_ready: Callable[[], bool]) -> dict[str, Route]:
        def ready() -> tuple[int, bytes, str]:
            ok = is_ready()
            return (200, b"ready\n", _TEXT) if ok else (503, b"loading\n", _TEXT)

        return {
            "/metrics": lambda: (200, generate_latest(self.registry), CONTENT_TYPE_LATEST),
            "/ready": ready,
            "/healthz": lambda: (200, b"ok\n", _TEXT),
            "/live": lambda: (200, b"ok\n", _TEXT),
        }

    def serve(self, addr: str, port: int, is_ready: Callable[[], bool]) -> int | None:
        """Start the HTTP endpoint once; returns its port, or None if it cannot bind."""
        if self._server is not None:
            return self._server.port
        server = Endpoint(addr, port, self.routes(is_ready))
        try:
            bound = server.start()
        except OSError as exc:
            # E.g. several pool processes on one port: jobs matter more than metrics.
            log.warning("metrics endpoint not started on %s:%d: %s", addr, port, exc)
            return None
        self._server = server
        log.info("metrics on http://%s:%d/metrics (also /ready, /healthz)", addr, bound)
        return bound

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


_TEXT = "text/plain; charset=utf-8"
