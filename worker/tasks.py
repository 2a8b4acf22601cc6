"""The `classify` task: a thin wrapper around worker.pipeline, registered by create_app."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from celery import Task

from producer.contract import TASK_NAME
from worker import deliveries, joblog
from worker.errors import ClassifyError, InternalError

if TYPE_CHECKING:
    from worker.celery_app import ImgqueueApp
    from worker.context import Context

log = logging.getLogger(__name__)


def register(app: ImgqueueApp) -> None:
    # throws: expected input errors are logged as one line, without a traceback.
    app.task(name=TASK_NAME, bind=True, throws=(ClassifyError,))(classify)


def classify(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    ctx = _context(self)
    with joblog.track(self.request, args, ctx.metrics) as job:
        # Counted, so a job that keeps killing its worker is capped (MAX_DELIVERIES).
        request = self.request
        redelivered = bool((request.delivery_info or {}).get("redelivered", True))
        with deliveries.tracked(
            ctx.gate,
            self.app.backend.client,
            request.id,
            request.retries,
            ctx.settings,
            redelivered,
        ):
            job.result = _classify(self, ctx, args, kwargs)
        return job.result


def _context(task: Task) -> Context:
    ctx: Context | None = getattr(task.app, "context", None)
    if ctx is None:  # no worker_init ran in this process (a pool Celery did not fork)
        from worker.context import Context

        ctx = task.app.context = Context(task.app.settings, main_pid=os.getpid())
    return ctx


def _classify(
    self: Task, ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    from worker import pipeline  # imports torch: only once a worker runs jobs

    settings = ctx.settings
    source, top_k = pipeline.validate_args(args, kwargs)
    deliveries.maybe_poison(source, settings)
    try:
        return pipeline.classify(source, top_k, ctx.load())
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
