"""Benchmark only: the classify task rebuilt on celery-batches, to measure against our worker.

`celery -A bench.batches_app worker -P threads -c 1` with celery_batches on PYTHONPATH
(bench/batches.py starts it). One `Batches` task receives up to `flush_every` requests at once;
it reads, decodes and preprocesses them one after another in its own thread, stacks the
tensors, runs one forward pass and stores every job's result by hand. Not part of the worker:
it reuses the worker's code (settings, fetch, decode, model) but none of its Celery wiring.

Environment, besides the worker's own settings (MODEL, PRECISION, MAX_BATCH_SIZE, ...):
BATCHES_FLUSH_MS (flush timer, default 10), BATCHES_CONCURRENCY (-c, default 1),
BATCHES_PREFETCH (messages held unacknowledged, default twice the batch size).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from typing import Any

# OpenMP's spin setting before torch loads, as in the real worker process.
from worker.context import configure_openmp

configure_openmp()

from worker.celery_app import create_app  # noqa: E402
from worker.fetch import fetch  # noqa: E402
from worker.imaging import decode  # noqa: E402
from worker.model import ImageModel, build_model  # noqa: E402
from worker.model.spec import from_settings  # noqa: E402
from worker.pipeline import validate_args  # noqa: E402
from worker.settings import Settings  # noqa: E402

import torch  # noqa: E402  # isort: skip
from celery import Celery  # noqa: E402  # isort: skip
from celery_batches import (  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: E402
    Batches,
)

QUEUE = "imgqueue-batches"
TASK_NAME = "imgqueue.classify_batches"

settings = Settings.from_env()
# The project's app, only to copy its task contract: its hooks act for its own worker only.
project = create_app(settings)
flush_every = settings.effective_batch_size
flush_interval = float(os.environ.get("BATCHES_FLUSH_MS", "10")) / 1000.0
concurrency = int(os.environ.get("BATCHES_CONCURRENCY", "1"))
prefetch = int(os.environ.get("BATCHES_PREFETCH", str(2 * flush_every)))

app = Celery(
    "imgqueue-batches",
    broker=settings.redis_url,
    backend=f"worker.backend:ResultBackend+{settings.redis_url}",
)
# The project's task contract (JSON only, late acks, result expiry and retries, transport
# timeouts), so only the batching differs between the two workers being compared.
_CONTRACT = (
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_accept_content",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_track_started",  # no effect: celery-batches never stores STARTED
    "result_expires",
    "result_backend_always_retry",
    "broker_transport",
    "broker_transport_options",
    "result_backend_transport_options",
    "broker_connection_retry_on_startup",
)
app.conf.update(
    {key: project.conf[key] for key in _CONTRACT},
    task_default_queue=QUEUE,
    worker_concurrency=concurrency,
    # celery-batches only fills a batch from prefetched messages: prefetch >= flush_every.
    worker_prefetch_multiplier=max(1, math.ceil(prefetch / concurrency)),
    worker_send_task_events=False,
)

_lock = threading.Lock()
_model: list[ImageModel] = []


def model() -> ImageModel:
    """The model, built and warmed up once per process, in the first task thread to ask."""
    with _lock:
        if not _model:
            weights = None
            if not settings.model.startswith("sleep:"):
                weights = from_settings(settings)
            built = build_model(
                settings.model, weights, settings.device, settings.precision, settings.gpu_decode
            )
            built.warm_up()
            built.warm_up(flush_every)
            _model.append(built)
        return _model[0]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _fail(request: Any, exc: Exception) -> None:
    # call_errbacks=False: Celery 5.7's mark_as_failure reads `request.errbacks`, which
    # celery-batches' SimpleRequest does not have (AttributeError after storing the failure).
    app.backend.mark_as_failure(request.id, exc, request=request, call_errbacks=False)


def classify_batch(requests: list[Any]) -> None:
    """One flushed buffer of `imgqueue.classify_batches` requests: one forward pass."""
    m = model()
    batch_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    ready: list[tuple[Any, str, int, dict[str, Any], dict[str, float]]] = []
    tensors: list[torch.Tensor] = []
    for request in requests:
        t0 = time.perf_counter()
        try:
            source, top_k = validate_args(tuple(request.args), dict(request.kwargs or {}))
            data = fetch(source, settings).data
            t1 = time.perf_counter()
            draft = m.resize_size if settings.draft_decode else None
            decoded = decode(
                data,
                max_pixels=settings.max_image_pixels,
                allowed_formats=settings.allowed_formats,
                draft_size=draft,
            )
            tensors.append(m.preprocess(decoded.image))
        except Exception as exc:  # a bad image fails its own job, not the batch
            _fail(request, exc)
            continue
        image = {"width": decoded.width, "height": decoded.height, "format": decoded.format}
        timings = {"fetch": _ms(t1 - t0), "preprocess": _ms(time.perf_counter() - t1)}
        ready.append((request, source, top_k, image, timings))
    if not ready:
        return
    t2 = time.perf_counter()
    try:
        probabilities = m.infer(torch.stack(tensors))
    except Exception as exc:
        for request, *_ in ready:
            _fail(request, exc)
        return
    inference = _ms(time.perf_counter() - t2)
    description = m.describe()
    for i, (request, source, top_k, image, timings) in enumerate(ready):
        predictions = m.postprocess(probabilities[i], top_k)
        result = {
            "source": source,
            **description,
            "predictions": [p.to_dict() for p in predictions],
            "image": image,
            "batch_size": len(ready),
            "batch_id": batch_id,
            "batch_received": len(requests),
            "timings_ms": {
                **timings,
                "inference": inference,
                "batch_total": _ms(time.perf_counter() - started),
            },
        }
        app.backend.mark_as_done(request.id, result, request=request)


# Registered without decorator syntax: Celery's decorators are untyped.
classify_batches = app.task(
    name=TASK_NAME,
    base=Batches,
    flush_every=flush_every,
    flush_interval=flush_interval,
    acks_late=True,
)(classify_batch)
