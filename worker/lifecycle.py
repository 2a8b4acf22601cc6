"""A worker process's life, top to bottom: start, ready, stop (and death).

Celery's signals call in here (worker/celery_app.py connects them, for its own app only):

1. `worker_init`, the worker's main process before its pool starts: `start` makes the Context,
   reports "not ready" (/ready answers 503, READY_FILE removed) and checks the model's weights,
   files only. A pool of threads runs tasks in this process, so it loads the model now.
2. `worker_process_init`, each child a forking pool starts: `forked` gives it a Context of
   its own and loads its model there. So the model (and CUDA) is only ever loaded after the
   fork, never in a parent that forks.
3. `ready` (from either): loads the model, then says so (metrics, READY_FILE, the registry).
   `announce` logs what the process serves, once logging is set up: a child's at once, the
   main process's at `worker_ready` (Celery sets up logging after `worker_init`).
4. `worker_shutdown`: `stop` reports "not ready" and releases the model and the metrics.

The inference thread's death (`died`) ends the worker so its supervisor restarts it. Lower
modules learn of this module only as callbacks passed down: none of them imports it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from celery.platforms import EX_FAILURE

from worker import health, ops
from worker.context import Context
from worker.settings import Settings

if TYPE_CHECKING:  # the model side: loaded only where a model is wanted
    from worker.runtime import Runtime

log = logging.getLogger(__name__)


class App(Protocol):
    """Where a process's Context lives: the Celery app (worker/celery_app.py), which calls in
    here."""

    settings: Settings
    context: Context | None


def start(app: App, *, forks: bool) -> None:
    """The main process, before the pool starts: not ready yet, the weights checked, and the
    model loaded unless a forking pool's children will load theirs (`forked`)."""
    app.context = ctx = Context(app.settings, main_pid=os.getpid())
    _not_ready(ctx, health.mark_loading)
    if not forks:  # with a forking pool, the first child serves the endpoint instead
        _serve(ctx)
    from worker import runtime  # a real model's spec loads torch: OpenMP is set by now

    ctx.weights = runtime.prepare(ctx.settings)
    if not forks:
        ready(ctx)


def forked(app: App) -> None:
    """A forked pool child: its own context and model, never the parent's."""
    parent = app.context or Context(app.settings, main_pid=os.getppid())
    app.context = ctx = parent.forked()
    ready(ctx)
    announce(ctx)  # a child inherits the main process's logging, already set up


def current(app: App) -> Context:
    """The app's context; one made on first use where no worker_init ran in this process (a
    pool that Celery did not fork)."""
    ctx = app.context
    if ctx is None:
        ctx = app.context = Context(app.settings, main_pid=os.getpid())
    return ctx


def load(ctx: Context) -> Runtime:
    """The process's model, its batcher and decoders: loaded on the first call."""
    from worker import runtime  # the model side: only once a worker runs jobs

    return ctx.load(
        functools.partial(
            runtime.start,
            ctx.settings,
            ctx.weights,
            on_batch=ctx.metrics.observe_batch,
            on_death=functools.partial(died, ctx),
        )
    )


def ready(ctx: Context) -> None:
    """Load the model (once), then publish the load time and report ready."""
    rt = load(ctx)
    _serve(ctx)
    ctx.metrics.model_load.set(rt.load_seconds)
    ctx.metrics.ready.set(1)
    ctx.ready.set()
    model = rt.classifier
    description = ops.identity(model.describe(), ctx.settings)
    ctx.metrics.set_model(description)
    ops.register(ctx.settings, description)
    info = {"pid": ctx.main_pid, "model": model.name, "weights": model.weights_id}
    health.mark_ready(ctx.settings.ready_file, info)


def announce(ctx: Context) -> None:
    """One INFO line naming the model this process serves and how, once it is loaded."""
    rt = ctx.runtime
    if rt is None:  # a forking pool's main process: its children serve and say so
        return
    model = rt.classifier
    d = ops.identity(model.describe(), ctx.settings)
    log.info(
        "serving model %s version=%s arch=%s weights=%s labels=%s backend=%s precision=%s "
        "device=%s batch=%d load=%.1fs",
        d.get("model") or d.get("name") or "-",
        d.get("version") or "-",
        d.get("arch") or "-",
        model.weights_id,
        d.get("labels") or "-",
        model.backend,
        model.precision,
        model.device,
        rt.batcher.max_batch_size,
        rt.load_seconds,
    )


def stop(ctx: Context) -> None:
    """Shutdown: not ready any more; the model, its threads and the metrics endpoint go."""
    _not_ready(ctx, health.mark_stopped)
    ctx.close()


def died(ctx: Context, exc: BaseException) -> None:
    """The model is gone: not ready any more, and the worker exits (code 1) so that its
    supervisor restarts it. Jobs already waiting failed with InferenceUnavailable and retry
    on other workers."""
    log.critical("the inference thread died (%r): this worker is no longer ready and exits", exc)
    _not_ready(ctx, health.mark_stopped)
    from celery.worker import state

    # What Celery's own SIGTERM handler sets; its loop raises WorkerShutdown(1) next turn.
    state.should_stop = EX_FAILURE


def _not_ready(ctx: Context, mark: Callable[[Path | None], None]) -> None:
    ctx.ready.clear()
    ctx.metrics.ready.set(0)
    mark(ctx.settings.ready_file)  # READY_FILE: health.mark_loading or mark_stopped


def _serve(ctx: Context) -> None:
    """The metrics endpoint (with /ready), where METRICS_PORT asks for one."""
    settings = ctx.settings
    if settings.metrics_port:
        ctx.metrics.serve(settings.metrics_addr, settings.metrics_port, ctx.is_ready)
