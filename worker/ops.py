"""Operations: the model's served name and its entry in the registry, what `imgqueue status`
shows of a worker, and its logging (redaction, levels). worker/lifecycle.py drives readiness."""

from __future__ import annotations

import logging
import os
from typing import Any

from core import models
from core.redaction import redact_text
from worker.context import Context
from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)


def served_name(settings: Settings) -> str:
    """The name producers route by: MODEL_NAME, else the card's, else "" (the default model)."""
    from worker.model.card import served_name as from_settings

    try:
        return from_settings(settings.model_name, settings.model_card)
    except ConfigError:  # checked at start; a card gone since must not break a status reply
        return settings.model_name


def identity(description: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A loaded model's describe() with its served `name` (from the settings where the model
    does not say)."""
    out = dict(description)
    if "name" not in out:
        out["name"] = served_name(settings)
    return out


def register(settings: Settings, description: dict[str, Any]) -> None:
    """Enter this worker's model in the registry (core.models), best-effort: a Redis that
    cannot take it logs a warning and the worker serves on (producers then refuse the name
    until some worker of it registers)."""
    config = settings.redis_config
    try:
        client = config.client(socket_connect_timeout=5, socket_timeout=5)
        try:
            entry = models.register(client, config, description)
        finally:
            client.close()
    except Exception as exc:
        log.warning(
            "could not register model %s in %s: %s",
            models.shown(str(description.get("name") or "")),
            models.models_key(config),
            exc,
        )
        return
    log.info("registered model %s on queue %s", models.shown(entry["name"]), entry["queue"])


def info(ctx: Context | None, settings: Settings) -> dict[str, Any]:
    """What `imgqueue status` shows of this worker (the `imgqueue_info` control command)."""
    rt = ctx.runtime if ctx is not None else None
    model = rt.classifier if rt is not None else None
    described = identity(model.describe(), settings) if model else {"name": served_name(settings)}
    name = str(described.get("name") or "")
    return {
        "pid": os.getpid(),
        "ready": ctx is not None and ctx.is_ready(),
        "redis_full": sorted(ctx.full) if ctx is not None else [],
        "name": name,
        "queue": models.queue_for(name),
        "arch": described.get("arch"),
        "version": described.get("version"),
        "labels": described.get("labels"),
        "model": described.get("model") or (model.name if model else settings.model),
        "weights": model.weights_id if model else settings.model_weights,
        "device": str(model.device) if model else settings.device,
        "precision": model.precision if model else settings.precision,
        "pool": settings.pool,
        "concurrency": settings.effective_concurrency,
        "jobs_last_minute": ctx.metrics.jobs_last_minute() if ctx else 0,
        "images_per_second": round(ctx.metrics.images_per_second(), 2) if ctx else 0.0,
    }


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


def redact_logs(logger: logging.Logger | None = None, **_: Any) -> None:
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
