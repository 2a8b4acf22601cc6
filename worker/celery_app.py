"""The Celery app, its settings, and the hooks that load the model once per process."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.worker.control import inspect_command

from producer.contract import DEFAULT_QUEUE, TASK_NAMES
from worker import deliveries, metrics, ops, runtime
from worker.broker import BrokerIncompatible, transport_for
from worker.errors import ConfigError, WeightsUnavailable
from worker.settings import Settings

log = logging.getLogger(__name__)

settings = Settings.from_env()
_redis = settings.redis_config
_backend = "SentinelResultBackend" if _redis.sentinel else "ResultBackend"

# Celery's Redis result backend, one round trip per stored state (worker/backend.py).
# With several sentinels the broker URL names the first: the transport gets them all as an
# option (see worker.broker.transport.SentinelChannel).
app = Celery(
    "imgqueue",
    broker=_redis.url.split(";", 1)[0],
    backend=f"worker.backend:{_backend}+{_redis.url}",
    include=["worker.tasks"],
)

# The delivery layer (worker/broker): reliable fetch, priorities, dead letters, heartbeats.
_transport = {
    **_redis.broker_transport_options(),
    "visibility_timeout": settings.visibility_timeout,
    "dead_worker_timeout": settings.dead_worker_timeout,
    "poll_interval": settings.broker_poll_interval,
    "max_message_bytes": settings.max_message_bytes,
    "dead_letter_limit": settings.dead_letter_limit,
    "known_tasks": TASK_NAMES,
    # A half-open connection must fail a heartbeat or a claim, not hang it: well above the
    # idle BLMOVE wait (BROKER_POLL_INTERVAL), well below DEAD_WORKER_TIMEOUT's 15 s.
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "on_settled": deliveries.GATE.settled,
    "on_dead_letter": metrics.observe_dead_letter,
    "on_event": metrics.observe_broker_event,
}
if _redis.sentinel:
    _transport["sentinels"] = _redis.sentinels()

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
    result_failure_expires=settings.result_failure_expires,
    result_extended=False,
    broker_transport=transport_for(_redis.url),
    broker_transport_options=_transport,
    # A result stored while Redis restarts must wait for it, not vanish: the message is then
    # acknowledged on the new connection, so a dropped result would leave the job PENDING.
    result_backend_always_retry=True,
    result_backend_max_retries=30,  # 10 ms doubling to 10 s per try: about four minutes
    result_backend_transport_options=_redis.backend_transport_options(),
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


@inspect_command()
def imgqueue_info(state: Any, **_: Any) -> dict[str, Any]:
    """`imgqueue status` asks every worker this: its model, device, readiness, recent jobs."""
    return ops.info(settings)


@signals.after_setup_logger.connect
def _on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        ops.configure_logging(settings, logger)


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: check the weights; load now unless we fork."""
    try:
        forks = _pool_forks(getattr(sender, "pool_cls", "threads"))
        _check_broker(sender)
        ops.starting(settings, forks=forks)
        runtime.prepare(settings)
        if not forks:
            ops.ready(runtime.start(settings))
    except (WeightsUnavailable, ConfigError, BrokerIncompatible) as exc:
        log.critical("worker cannot start: %s", exc)
        raise SystemExit(f"worker cannot start: {exc}") from exc


def _check_broker(worker: Any) -> None:
    """Refuse to start on a transport that cannot keep the no-loss guarantee."""
    expected = transport_for(_redis.url)
    configured = str(app.conf.broker_transport or "")
    if configured != expected:
        raise ConfigError(
            f"broker_transport is {configured!r}, not {expected!r}: kombu's own Redis "
            "transport can lose a message when a worker dies (see docs/reliability.md)"
        )
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        raise ConfigError(f"the broker must be Redis (REDIS_URL), not {url.split(':')[0]}")
    from worker.broker import compat

    compat.check()


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """A forked pool child (or the solo pool): load the model here, never in the parent."""
    ops.ready(runtime.start(settings))


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    ops.stopping(settings)
    runtime.stop()
