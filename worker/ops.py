"""Operations hooks the Celery signals call: metrics endpoint, readiness, batch metrics."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals
from celery.platforms import EX_FAILURE

from producer.redaction import redact_text
from worker import health, metrics, runtime
from worker.runtime import Runtime
from worker.settings import Settings

log = logging.getLogger(__name__)

# The worker's main process: what the ready file names, also when forked children load models.
_main_pid = os.getpid()


def _serve(settings: Settings) -> None:
    if settings.metrics_port:
        metrics.serve(settings.metrics_addr, settings.metrics_port, health.is_ready)


def starting(settings: Settings, *, forks: bool = False) -> None:
    """Before the model loads: not ready yet, but the endpoint already answers (/ready: 503).

    With a forking pool the models live in the children, so the first child serves instead.
    """
    global _main_pid
    _main_pid = os.getpid()
    health.mark_loading(settings.ready_file)
    metrics.READY.set(0)
    if not forks:
        _serve(settings)


def ready(rt: Runtime) -> Runtime:
    """After load and warm-up: count batches, publish the load time, report ready."""
    _serve(rt.settings)
    rt.batcher.on_batch = metrics.observe_batch
    rt.batcher.on_death = lambda exc: inference_died(rt.settings, exc)
    metrics.MODEL_LOAD.set(rt.load_seconds)
    metrics.READY.set(1)
    model = rt.classifier
    info = {"pid": _main_pid, "model": model.name, "weights": model.weights_id}
    health.mark_ready(rt.settings.ready_file, info)
    return rt


def inference_died(settings: Settings, exc: BaseException) -> None:
    """The model is gone: not ready any more, and the worker exits (code 1) so that its
    supervisor restarts it. Jobs already waiting failed with InferenceUnavailable and retry
    on other workers."""
    log.critical("the inference thread died (%r): this worker is no longer ready and exits", exc)
    metrics.READY.set(0)
    health.mark_stopped(settings.ready_file)
    from celery.worker import state

    # What Celery's own SIGTERM handler sets; its loop raises WorkerShutdown(1) next turn.
    state.should_stop = EX_FAILURE


def info(settings: Settings) -> dict[str, Any]:
    """What `imgqueue status` shows of this worker (the `imgqueue_info` control command)."""
    rt = runtime.current()
    model = rt.classifier if rt is not None else None
    return {
        "pid": os.getpid(),
        "ready": health.is_ready(),
        "model": model.name if model else settings.model,
        "weights": model.weights_id if model else settings.model_weights,
        "device": str(model.device) if model else settings.device,
        "precision": model.precision if model else settings.precision,
        "pool": settings.pool,
        "concurrency": settings.effective_concurrency,
        "jobs_last_minute": metrics.jobs_last_minute(),
        "images_per_second": round(metrics.images_per_second(), 2),
    }


def stopping(settings: Settings) -> None:
    metrics.READY.set(0)
    health.mark_stopped(settings.ready_file)
    metrics.shutdown()


class RedactingFilter(logging.Filter):
    """Strips credentials and query strings from URLs in every log line (Celery's own too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "://" in message:
            redacted = redact_text(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def _redact_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    for handler in logger.handlers if logger is not None else []:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


# Celery's own lines for every task ("Received task", "Task ... succeeded in ...: <result>").
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def configure_logging(settings: Settings, logger: logging.Logger) -> None:
    """LOG_LEVEL (when set) over Celery's -l; one `job {...}` line per job instead of three.

    Celery's two INFO lines per task repeat what the job line says (the success line with the
    whole result) and took ~9% of the task threads' busy time in a profile; DEBUG brings them
    back. Failures (ERROR) still come through.
    """
    if settings.log_level:
        logger.setLevel(settings.log_level)
    quiet = logger.getEffectiveLevel() > logging.DEBUG
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


signals.after_setup_logger.connect(_redact_logs, weak=False)
signals.after_setup_task_logger.connect(_redact_logs, weak=False)
