"""The Celery app: `create_app(settings)` builds it, its configuration and its process hooks.

Importing this module reads no environment, connects no signal and loads no torch; the
`worker` package builds the app from the environment when `celery -A worker` asks for it.
A second app in the same process (a benchmark's) is left alone by this one's hooks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.worker.control import inspect_command

from core.contract import TASK_NAMES
from core.models import queue_for
from worker import lifecycle, ops, result_store, tasks
from worker.broker import BrokerIncompatible, transport_for
from worker.context import Context, configure_openmp
from worker.errors import ConfigError, WeightsUnavailable
from worker.settings import Settings


class ImgqueueApp(Celery):  # type: ignore[misc]  # Celery is untyped
    """A Celery app with this process's Context (None until the worker starts)."""

    settings: Settings
    context: Context | None = None
    # The name producers route by ("" for the default model) and so the queue consumed.
    model_name: str = ""

    # The transport's hooks (worker/broker), bound at configuration time, the context later.
    def on_settled(self, job: str) -> None:
        if self.context is not None:
            self.context.gate.settled(job)

    def on_dead_letter(self, reason: str) -> None:
        if self.context is not None:
            self.context.metrics.observe_dead_letter(reason)

    def on_broker_event(self, event: str, count: int) -> None:
        if self.context is not None:
            self.context.metrics.observe_broker_event(event, count)

    def on_redis_full(self, store: str, full: bool) -> None:
        """Redis refused a write for lack of memory (True), or took one again (False)."""
        if self.context is not None:
            self.context.redis_full(store, full)

    def fetch_paused(self) -> bool:
        return self.context is not None and self.context.fetch_paused()


def create_app(settings: Settings) -> ImgqueueApp:
    # Celery's configuration, one commented setting after another: long, but it reads as the
    # one place that says how the worker is configured; split, each part would need the rest.
    redis = settings.redis_config
    # Celery's Redis result backend, one round trip per stored state (worker/backend.py), on
    # RESULT_URL: the broker's Redis by default, or a Redis Cluster (worker/result_store.py).
    # With several sentinels the broker URL names the first: the transport gets them all as
    # an option (see worker.broker.transport.SentinelChannel).
    backend, backend_options = result_store.backend(settings)
    app = ImgqueueApp("imgqueue", broker=redis.url.split(";", 1)[0], backend=backend)
    app.settings = settings
    # A card is read here (no torch): its name picks the queue (core.models.queue_for).
    from worker.model.card import served_name

    app.model_name = served_name(settings.model_name, settings.model_card)
    # The delivery layer (worker/broker): reliable fetch, priorities, dead letters, heartbeats.
    transport: dict[str, Any] = {
        **redis.broker_transport_options(),
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
        "on_settled": app.on_settled,
        "on_dead_letter": app.on_dead_letter,
        "on_event": app.on_broker_event,
        "on_full": app.on_redis_full,
        "is_paused": app.fetch_paused,
    }
    if redis.sentinel:
        transport["sentinels"] = redis.sentinels()
    app.conf.update(
        # JSON only: no pickle anywhere, so any language can produce and read.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Expensive work: acknowledge after the job ends, re-queue it if its process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # STARTED is written by the tasks themselves, in the round trip that counts the
        # delivery (worker/deliveries.py), not by Celery's tracer in a round trip of its own.
        task_track_started=False,
        result_expires=settings.result_expires,
        result_failure_expires=settings.result_failure_expires,
        result_extended=False,
        broker_transport=transport_for(redis.url),
        broker_transport_options=transport,
        # A result stored while Redis restarts must wait for it, not vanish: the message is
        # then acknowledged on the new connection, so a dropped result would leave the job
        # PENDING.
        result_backend_always_retry=True,
        result_backend_max_retries=30,  # 10 ms doubling to 10 s per try: about four minutes
        result_backend_transport_options=backend_options,
        broker_connection_retry_on_startup=True,
        # Each model on its own queue: `celery` for the default model, `model.<name>` for a
        # named one (MODEL_NAME, or the card's name); `-Q` still overrides it.
        task_default_queue=queue_for(app.model_name),
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
    tasks.register(app)
    inspect_command()(imgqueue_info)
    _connect_hooks(app)
    return app


def imgqueue_info(state: Any, **_: Any) -> dict[str, Any]:
    """`imgqueue status` asks every worker this: its model, device, readiness, recent jobs."""
    app = state.consumer.app
    return ops.info(getattr(app, "context", None), app.settings)


def _pool_forks(pool: Any) -> bool:
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    return "prefork" in name or name == "processes"


def _connect_hooks(app: ImgqueueApp) -> None:
    """Hooks for this app's worker only: each checks the sender, or is connected by one that
    did. Connected once per app; they hand the process's life to worker/lifecycle.py."""
    settings = app.settings

    def on_import_modules(sender: Any = None, **_: Any) -> None:
        # Before the worker imports any task module, so before torch loads OpenMP.
        if sender is app:
            configure_openmp()

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        """Main process, before the pool starts: check the weights; load now unless we fork."""
        if getattr(sender, "app", None) is not app:
            return
        for signal, receiver in (
            (signals.after_setup_logger, on_setup_logger),
            (signals.after_setup_logger, ops.redact_logs),
            (signals.after_setup_task_logger, ops.redact_logs),
            (signals.worker_process_init, on_process_init),
            (signals.worker_ready, on_worker_ready),
            (signals.worker_shutdown, on_shutdown),
        ):
            signal.connect(receiver, weak=False)
        try:
            _check_broker(app)
            lifecycle.start(app, forks=_pool_forks(getattr(sender, "pool_cls", "threads")))
        except (WeightsUnavailable, ConfigError, BrokerIncompatible) as exc:
            # Printed once, to stderr, on exit. Not logged too: Celery sets up logging after
            # worker_init, so a log line here went to stderr as well and said it twice.
            raise SystemExit(f"worker cannot start: {exc}") from exc

    def on_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            ops.configure_logging(settings, logger)

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        # The main process loaded its model in worker_init, before logging was set up.
        if getattr(sender, "app", None) is app and app.context is not None:
            lifecycle.announce(app.context)

    def on_process_init(**_: Any) -> None:
        lifecycle.forked(app)  # a forked pool child: its own context and model

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and app.context is not None:
            lifecycle.stop(app.context)

    signals.import_modules.connect(on_import_modules, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)


def _check_broker(app: Celery) -> None:
    """Refuse to start on a transport that cannot keep the no-loss guarantee."""
    url = str(app.conf.broker_url or "")
    expected = transport_for(url)
    configured = str(app.conf.broker_transport or "")
    if configured != expected:
        raise ConfigError(
            f"broker_transport is {configured!r}, not {expected!r}: kombu's own Redis "
            "transport can lose a message when a worker dies (see docs/reliability.md)"
        )
    if not url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        raise ConfigError(f"the broker must be Redis (REDIS_URL), not {url.split(':')[0]}")
    from worker.broker import compat

    compat.check()
