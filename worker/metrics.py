"""Prometheus metrics for one worker process, served over HTTP on METRICS_PORT (0: off).

The same small server (worker/endpoint.py, bounded: one thread, timeouts, a connection cap)
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

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from worker.endpoint import Endpoint, Route

log = logging.getLogger(__name__)

# Seconds: from a cache hit (sub-millisecond) up to a slow fetch or a big CPU batch.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_QUEUE_WAIT = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_RATE_WINDOW_S = 60.0

JOBS = Counter("imgqueue_jobs_total", "Jobs finished by this worker, by outcome", ["outcome"])
FAILURES = Counter("imgqueue_job_failures_total", "Failed jobs by error type", ["error_type"])
CACHE = Counter("imgqueue_result_cache_lookups_total", "Result cache lookups", ["result"])
QUEUE_WAIT = Histogram(
    "imgqueue_queue_wait_seconds",
    "Time from submit to a worker starting the job",
    buckets=_QUEUE_WAIT,
)
STAGE = {
    stage: Histogram(f"imgqueue_{stage}_seconds", f"Per-job {stage} time", buckets=_LATENCY)
    for stage in ("fetch", "preprocess", "inference")
}
JOB_DURATION = Histogram(
    "imgqueue_job_duration_seconds", "Per-job time inside the worker", buckets=_LATENCY
)
BATCH_SIZE = Histogram("imgqueue_batch_size", "Images per inference batch", buckets=_BATCH)
BATCH_SECONDS = Histogram(
    "imgqueue_batch_inference_seconds", "Model time per inference batch", buckets=_LATENCY
)
IMAGES = Counter("imgqueue_images_inferred_total", "Images run through the model")
IMAGES_PER_SECOND = Gauge(
    "imgqueue_images_per_second", f"Images inferred per second over the last {_RATE_WINDOW_S:g}s"
)
DEAD_LETTERS = Counter(
    "imgqueue_dead_lettered_total",
    "Messages this worker moved to the dead-letter list, by reason",
    ["reason"],
)
RETURNED = Counter(
    "imgqueue_messages_returned_total",
    "Messages this worker returned to their queues, by why (dead consumer, lost reply, "
    "visibility timeout)",
    ["why"],
)
MODEL_LOAD = Gauge("imgqueue_model_load_seconds", "Time to load and warm up the model")
READY = Gauge("imgqueue_ready", "1 once the model is loaded and warmed up")

_recent: collections.deque[tuple[float, int]] = collections.deque()
_recent_lock = threading.Lock()


def images_per_second() -> float:
    cutoff = time.monotonic() - _RATE_WINDOW_S
    with _recent_lock:
        while _recent and _recent[0][0] < cutoff:
            _recent.popleft()
        return sum(n for _, n in _recent) / _RATE_WINDOW_S


IMAGES_PER_SECOND.set_function(images_per_second)


def observe_batch(size: int, seconds: float) -> None:
    """The batcher's `on_batch` callback."""
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)
    IMAGES.inc(size)
    with _recent_lock:
        _recent.append((time.monotonic(), size))


_finished: collections.deque[float] = collections.deque()


def jobs_last_minute() -> int:
    """Jobs this process finished (any outcome) in the last 60 s."""
    cutoff = time.monotonic() - _RATE_WINDOW_S
    with _recent_lock:
        while _finished and _finished[0] < cutoff:
            _finished.popleft()
        return len(_finished)


def observe_job(
    outcome: str,
    error_type: str | None,
    queue_wait: float | None,
    timings_ms: Mapping[str, Any] | None,
    cached: bool | None,
) -> None:
    JOBS.labels(outcome=outcome).inc()
    with _recent_lock:
        _finished.append(time.monotonic())
    if error_type:
        FAILURES.labels(error_type=error_type).inc()
    if queue_wait is not None:
        QUEUE_WAIT.observe(queue_wait)
    if cached is not None:
        CACHE.labels(result="hit" if cached else "miss").inc()
    for stage, histogram in STAGE.items():
        value = (timings_ms or {}).get(stage)
        if isinstance(value, int | float):
            histogram.observe(value / 1000.0)
    total = (timings_ms or {}).get("total")
    if isinstance(total, int | float):
        JOB_DURATION.observe(total / 1000.0)


def observe_dead_letter(reason: str) -> None:
    """The transport's `on_dead_letter` hook."""
    DEAD_LETTERS.labels(reason=reason).inc()


def observe_broker_event(event: str, count: int) -> None:
    """The transport's `on_event` hook: messages returned to their queues, and why."""
    if event.startswith("returned_"):
        RETURNED.labels(why=event.removeprefix("returned_")).inc(count)


_TEXT = "text/plain; charset=utf-8"
_server: Endpoint | None = None


def routes(is_ready: Callable[[], bool]) -> dict[str, Route]:
    def ready() -> tuple[int, bytes, str]:
        ok = is_ready()
        return (200, b"ready\n", _TEXT) if ok else (503, b"loading\n", _TEXT)

    return {
        "/metrics": lambda: (200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST),
        "/ready": ready,
        "/healthz": lambda: (200, b"ok\n", _TEXT),
        "/live": lambda: (200, b"ok\n", _TEXT),
    }


def serve(addr: str, port: int, is_ready: Callable[[], bool]) -> int | None:
    """Start the HTTP endpoint once per process; returns its port, or None if it cannot bind."""
    global _server
    if _server is not None:
        return _server.port
    server = Endpoint(addr, port, routes(is_ready))
    try:
        bound = server.start()
    except OSError as exc:
        # E.g. several pool processes on one port: jobs matter more than metrics.
        log.warning("metrics endpoint not started on %s:%d: %s", addr, port, exc)
        return None
    _server = server
    log.info("metrics on http://%s:%d/metrics (also /ready, /healthz)", addr, bound)
    return bound


def shutdown() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
