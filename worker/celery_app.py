"""The Celery app, its settings, and the hooks that load the model once per process."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from producer.contract import DEFAULT_QUEUE
from worker import compat, ops, runtime
from worker.errors import ConfigError, WeightsUnavailable
from worker.settings import Settings

log = logging.getLogger(__name__)

settings = Settings.from_env()
compat.install()

# Celery's Redis result backend, one round trip per stored state (worker/backend.py).
app = Celery(
    "imgqueue",
    broker=settings.redis_url,
    backend=f"worker.backend:ResultBackend+{settings.redis_url}",
    include=["worker.tasks"],
)

# Redis re-delivers an unacknowledged message after the visibility timeout; the same value
# must apply to the broker and to the result backend's pub/sub, so it is set for both.
# kombu only sweeps for such messages every interval x throttle seconds (100 s by default):
# sweep every tenth of the timeout (1..10 s, one cheap ZRANGE) so a lost job returns promptly.
_transport = {
    "visibility_timeout": settings.visibility_timeout,
    "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
    "unacked_restore_throttle": 1,
}

app.conf.update(
    # JSON only: no pickle anywhere, so any language can produce and read.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # Expensive work: acknowledge after the job ends, re-queue it if its process dies.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_track_started=True,
    result_expires=settings.result_expires,
    result_extended=False,
    broker_transport_options=_transport,
    # A result stored while Redis restarts must wait for it, not vanish: the message is then
    # acknowledged on the new connection, so a dropped result would leave the job PENDING.
    result_backend_always_retry=True,
    result_backend_max_retries=30,  # 10 ms doubling to 10 s per try: about four minutes
    result_backend_transport_options=_transport,
    broker_connection_retry_on_startup=True,
    task_default_queue=DEFAULT_QUEUE,
    # Threads keep one model per process and feed its batcher; prefetch only what the
    # threads can work on, so idle workers elsewhere still get jobs.
    # Set through POOL, not --pool: Celery cannot tell an explicit --pool prefork from its
    # default, so a configured pool would silently win over the command line.
    worker_pool=settings.pool,
    worker_concurrency=settings.effective_concurrency,
    worker_prefetch_multiplier=settings.prefetch_multiplier,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # Events, so Flower (and `celery events`) show workers and tasks live.
    worker_send_task_events=settings.task_events,
    task_send_sent_event=True,
)


def _pool_forks(pool: Any) -> bool:
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return "prefork" in name or name == "processes"


@signals.after_setup_logger.connect
def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        ops.configure_logging(settings, logger)


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: check the weights; load now unless we fork."""
    try:
        forks = _pool_forks(getattr(sender, "pool_cls", "threads"))
        ops.starting(settings, forks=forks)
        runtime.prepare(settings)
        if not forks:
            ops.ready(runtime.start(settings))
    except (WeightsUnavailable, ConfigError) as exc:
        log.critical("worker cannot start: %s", exc)
        raise SystemExit(f"worker cannot start: {exc}") from exc


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """A forked pool child (or the solo pool): load the model here, never in the parent."""
    ops.ready(runtime.start(settings))


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    ops.stopping(settings)
    runtime.stop()
