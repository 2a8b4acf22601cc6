"""The tasks, thin wrappers registered by create_app: `classify` (worker.pipeline) and
`classify_many` (worker.bulk)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry

from core.contract import BULK_TASK_NAME, TASK_NAME
from core.redaction import display_url
from worker import bulk, cancels, deliveries, events, joblog, lifecycle, testing
from worker.context import Context
from worker.errors import (
    Cancelled,
    ClassifyError,
    Expired,
    InternalError,
    InvalidArguments,
    JobLost,
)
from worker.redis_full import retry_while_full, telling

log = logging.getLogger(__name__)


def register(app: Celery) -> None:
    # throws: expected input errors are logged as one line, without a traceback.
    app.task(name=TASK_NAME, bind=True, throws=(ClassifyError,))(classify)
    # max_retries=None: FETCH_RETRIES bounds the retries of each image (see classify_many).
    app.task(name=BULK_TASK_NAME, bind=True, throws=(ClassifyError,), max_retries=None)(
        classify_many
    )


def classify(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    ctx = lifecycle.current(self.app)
    with joblog.track(self.request, args, ctx.metrics) as job:
        # Counted, so a job that keeps killing its worker is capped (MAX_DELIVERIES).
        request = self.request
        redelivered = bool((request.delivery_info or {}).get("redelivered", True))
        try:
            with deliveries.tracked(
                ctx.gate,
                self.app.backend.client,
                request.id,
                request.retries,
                ctx.settings,
                redelivered,
                self.app.backend.started(request.id, request.hostname),
                cancels=True,
            ) as delivery:
                deadline = cancels.check_deadline(request, delivery)
                job.result = _classify(self, ctx, args, kwargs, deadline)
        except (Cancelled, Expired) as exc:  # never started: REVOKED, nothing fetched
            raise cancels.end(self, exc, ctx.settings.redis_key_prefix) from None
        return job.result


def _classify(
    self: Task,
    ctx: Context,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    deadline: float | None = None,
) -> dict[str, Any]:
    from worker import pipeline  # the model side: only once a worker runs jobs

    settings = ctx.settings
    source, top_k = pipeline.validate_args(args, kwargs)
    testing.maybe_poison(source, settings)
    try:
        rt, at = lifecycle.load(ctx), cancels.monotonic(deadline)
        return pipeline.classify(source, top_k, rt, at, self.request.id)
    except ClassifyError as exc:
        if exc.transient and self.request.retries < settings.fetch_retries:
            # Exponential backoff (FETCH_RETRY_BACKOFF x 1, 2, 4 ...) for resets, timeouts,
            # 5xx, and for a worker whose model stopped (another worker then takes it).
            countdown = settings.fetch_retry_backoff * 2**self.request.retries
            raise _retry(self, countdown=countdown, exc=exc) from exc
        raise
    except Exception as exc:
        log.exception("unexpected error classifying %r", source)
        raise InternalError(f"{type(exc).__name__}: {exc}") from exc


def classify_many(self: Task, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Many images, one message: each image's result or error is stored under its own id."""
    ctx = lifecycle.current(self.app)
    settings, request = ctx.settings, self.request
    client = self.app.backend.client
    try:
        images, outcome = bulk.parse(args, kwargs)
    except InvalidArguments as invalid:
        # Whoever polls these images' ids learns why, instead of waiting forever.
        self.app.backend.store_many([(i, invalid, "FAILURE") for i in bulk.ids_in(args)])
        raise
    for task_id, error in outcome.failures.items():
        log.warning("bulk %s: image %s rejected: %s", request.id, task_id, error)
    redelivered = bool((request.delivery_info or {}).get("redelivered", True))
    # A first delivery's images have no state yet: one MSETNX starts them all, in the round
    # trip of the message's count, and tells whether any had one after all.
    begun = cancels.bulk_start(self, images, settings.redis_key_prefix, redelivered)
    done = _finished(self, images, settings) if begun is None else set()
    todo = [i for i in images if i.id not in done]
    started: dict[str, float] = {}
    try:
        with deliveries.tracked(
            ctx.gate,
            client,
            request.id,
            request.retries,
            settings,
            redelivered,
            self.app.backend.started(request.id, request.hostname) if begun is None else None,
            rider=begun,
        ) as delivery:
            if delivery > 1:
                # Started before and never finished: its worker died, maybe because of one of
                # these images. Each goes on as its own `classify` job under its own id, so
                # delivery counting and MAX_DELIVERIES single out the culprit alone.
                cancels.keep_started(self, [i.id for i in todo])
                _split(self, todo)
                return {**outcome.summary(len(done)), "split": len(todo)}
            if begun is not None and not begun.written:  # some image had a state already
                done = _finished(self, images, settings)
                todo = [i for i in images if i.id not in done]
            todo = _end_early(self, ctx, todo, outcome, begun)
            for image in todo:
                testing.maybe_poison(image.source, settings)
            bulk.run(todo, lifecycle.load(ctx), outcome, started)
    except JobLost as exc:
        outcome.failures.update((i.id, exc) for i in todo)
    _store(self, ctx, images, outcome, started, len(done))
    retry = [i for i in todo if i.id in outcome.transient]
    if retry and request.retries < settings.fetch_retries:
        # Only the images that failed transiently, with the same backoff as `classify`.
        cancels.keep_started(self, [i.id for i in retry])
        countdown = settings.fetch_retry_backoff * 2**request.retries
        first = next(iter(outcome.transient.values()))
        raise _retry(
            self, args=[[i.to_dict() for i in retry]], kwargs={}, countdown=countdown, exc=first
        )
    return outcome.summary(len(done))


def _finished(task: Task, images: list[bulk.Image], settings: Any) -> set[str]:
    """The images with a final state already (a redelivery, a duplicate): skipped."""
    done = bulk.finished_ids(task.app.backend.client, images, settings.redis_key_prefix)
    if done:  # a redelivery: on a cluster, count what a killed worker stored but not counted
        task.app.backend.recount(sorted(done), task.request)
    return done


def _end_early(
    task: Task,
    ctx: Context,
    images: list[bulk.Image],
    outcome: bulk.Outcome,
    begun: cancels.BulkStart | None = None,
) -> list[bulk.Image]:
    """Start the images (worker/cancels.py; `begun`: the message's BulkStart): the cancelled
    and expired ones end REVOKED now, before any is fetched; returns the others."""
    prefix = ctx.settings.redis_key_prefix
    cancels.default_deadline(images, task.request)
    ended = cancels.start_images(task, images, prefix, begun=begun)
    if not ended:
        return images
    cancels.end_images(task, ended, prefix)
    wait = joblog.queue_wait(task.request, time.time())
    sources = {i.id: i.source for i in images}
    for task_id, error in ended.items():
        job = joblog.Job(
            id=task_id,
            source=display_url(sources.get(task_id, "")) or None,
            retries=task.request.retries,
            queue_wait=wait,
            bulk=task.request.id,
        )
        joblog.record(job, "revoked", type(error).__name__, str(error), ctx.metrics)
    outcome.revoked += len(ended)
    return [i for i in images if i.id not in ended]


def _store(
    task: Task,
    ctx: Context,
    images: list[bulk.Image],
    outcome: bulk.Outcome,
    started: dict[str, float],
    skipped: int = 0,
) -> None:
    """Every image's final state in one round trip, with the message's own result when no
    retry follows (`skipped`: its images found finished), then each job's line and metrics."""
    final = task.request.retries >= ctx.settings.fetch_retries
    if final:  # no retry left: transient errors are final too
        outcome.failures.update(outcome.transient)
        outcome.transient.clear()
    entries: list[tuple[str, Any, str]] = [
        (task_id, result, "SUCCESS") for task_id, result in outcome.results.items()
    ]
    entries += [(task_id, exc, "FAILURE") for task_id, exc in outcome.failures.items()]
    summary = None if outcome.transient else outcome.summary(skipped)  # else: a retry follows
    task.app.backend.store_many(entries, summary=summary)
    wait = joblog.queue_wait(task.request, time.time())
    sources = {i.id: i.source for i in images}
    for task_id, ended, error_type, error, result in _records(outcome):
        job = joblog.Job(
            id=task_id,
            source=display_url(sources.get(task_id, "")) or None,
            retries=task.request.retries,
            queue_wait=wait,
            started=started.get(task_id, time.perf_counter()),
            result=result,
            bulk=task.request.id,
        )
        joblog.record(job, ended, error_type, error, ctx.metrics)


def _records(outcome: bulk.Outcome) -> Any:
    for task_id, result in outcome.results.items():
        yield task_id, "success", None, None, result
    for task_id, exc in outcome.failures.items():
        yield task_id, "failure", type(exc).__name__, str(exc), None
    for task_id, exc in outcome.transient.items():
        yield task_id, "retry", type(exc).__name__, str(exc), None


def _retry(task: Task, **options: Any) -> BaseException:
    """`task.retry(...)`, whose message waits while Redis is full instead of failing the job
    (worker/redis_full.py). Returns what to raise: Celery's Retry."""

    def send() -> BaseException:
        try:
            task.retry(**options)
        except Retry as retry:
            raised: BaseException = retry
            return raised
        raise AssertionError("Task.retry returns only by raising")

    return retry_while_full(send, telling(task.app, "broker"), "a retry's message")


def _split(task: Task, images: list[bulk.Image]) -> None:
    info = task.request.delivery_info or {}
    options: dict[str, Any] = {"queue": info.get("routing_key") or None}
    priority = info.get("priority")
    if priority is not None:
        options["priority"] = priority
    origins = events.image_origins(task.request)  # each keeps its group, webhook, tenant
    with task.app.producer_or_acquire() as producer:
        for image in images:
            task.app.send_task(
                TASK_NAME,
                args=[image.source],
                kwargs={"top_k": image.top_k},
                task_id=image.id,
                producer=producer,
                argsrepr=repr([display_url(image.source)]),
                headers=events.headers(origins.get(image.id)),
                **options,
            )
    log.warning("bulk %s redelivered: split into %d single jobs", task.request.id, len(images))
