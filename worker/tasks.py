"""The `classify` task: a thin wrapper around worker.pipeline."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from producer.contract import TASK_NAME
from worker import deliveries, joblog, pipeline, runtime
from worker.celery_app import app, settings
from worker.errors import ClassifyError, InternalError

log = logging.getLogger(__name__)


# throws: expected input errors are logged as one line, without a traceback.
@app.task(name=TASK_NAME, bind=True, throws=(ClassifyError,))
def classify(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with joblog.track(self.request, args) as job:
        # Counted, so a job that keeps killing its worker is capped (MAX_DELIVERIES).
        request = self.request
        redelivered = bool((request.delivery_info or {}).get("redelivered", True))
        with deliveries.tracked(
            app.backend.client, request.id, request.retries, settings, redelivered
        ):
            job.result = _classify(self, args, kwargs)
        return job.result


def _classify(self: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    source, top_k = pipeline.validate_args(args, kwargs)
    deliveries.maybe_poison(source, settings)
    try:
        return pipeline.classify(source, top_k, runtime.get(settings))
    except ClassifyError as exc:
        if exc.transient and self.request.retries < settings.fetch_retries:
            # Exponential backoff (FETCH_RETRY_BACKOFF x 1, 2, 4 ...) for resets, timeouts,
            # 5xx, and for a worker whose model stopped (another worker then takes it).
            countdown = settings.fetch_retry_backoff * 2**self.request.retries
            raise self.retry(countdown=countdown, exc=exc) from exc
        raise
    except Exception as exc:
        log.exception("unexpected error classifying %r", source)
        raise InternalError(f"{type(exc).__name__}: {exc}") from exc
