"""One structured log line per job, and the per-job metrics, from a single place.

Each finished delivery logs `job {...}` with a JSON object: id, source (credentials and query
strings removed), outcome (success, failure, retry, revoked), error type, retries, queue wait,
timings, cache hit. Producers that add a `sent_at` header (epoch seconds; this project's
producer does) get queue-wait numbers; other clients simply leave it out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import Retry

from core.redaction import display_url, redact_text
from worker.cancels import Ended
from worker.errors import ClassifyError
from worker.metrics import Metrics

log = logging.getLogger("imgqueue.jobs")

SENT_AT_HEADER = "sent_at"


@dataclass
class Job:
    """Filled in by the task: the result, once there is one."""

    id: str
    source: str | None
    retries: int
    queue_wait: float | None
    started: float = field(default_factory=time.perf_counter)
    result: dict[str, Any] | None = None
    bulk: str | None = None  # the id of the bulk message that carried this image


def queue_wait(request: Any, now: float) -> float | None:
    sent_at = getattr(request, SENT_AT_HEADER, None)
    if not isinstance(sent_at, int | float) or isinstance(sent_at, bool):
        return None
    if (getattr(request, "retries", 0) or 0) > 0:
        return None  # a retry's wait includes its backoff: not queueing
    return max(0.0, now - float(sent_at))  # clocks of two hosts may disagree a little


@contextlib.contextmanager
def track(request: Any, args: tuple[Any, ...], metrics: Metrics) -> Iterator[Job]:
    """Wrap one task execution; logs and counts however it ends, then lets it end so."""
    # Shown, never raw: no credentials, no query, at most MAX_SHOWN characters, whatever the
    # length check (in the task) will say about it.
    source = display_url(args[0]) if args and isinstance(args[0], str) else None
    job = Job(
        id=str(getattr(request, "id", "")),
        source=source,
        retries=int(getattr(request, "retries", 0) or 0),
        queue_wait=queue_wait(request, time.time()),
    )
    outcome, error_type, error = "success", None, None
    try:
        yield job
    except Retry as exc:
        cause = exc.exc
        outcome, error_type, error = "retry", type(cause).__name__ if cause else None, str(cause)
        raise
    except ClassifyError as exc:
        outcome, error_type, error = "failure", type(exc).__name__, str(exc)
        raise
    except Ended as exc:  # cancelled or expired before it started, REVOKED stored
        outcome, error_type = "revoked", type(exc.error).__name__ if exc.error else None
        error = str(exc.error) if exc.error else None
        raise
    except Exception as exc:
        outcome, error_type, error = "failure", "InternalError", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record(job, outcome, error_type, error, metrics)


def record(
    job: Job, outcome: str, error_type: str | None, error: str | None, metrics: Metrics
) -> None:
    """Count and log one finished job (or one image of a bulk message)."""
    result = job.result or {}
    timings = result.get("timings_ms")
    cached = result.get("cached") if outcome == "success" else None
    try:
        metrics.observe_job(outcome, error_type, job.queue_wait, timings, cached)
    except Exception:  # metrics must never fail a job
        log.exception("metrics update failed")
    line: dict[str, Any] = {
        "id": job.id,
        "source": job.source,
        "outcome": outcome,
        "retries": job.retries,
        "elapsed_ms": round((time.perf_counter() - job.started) * 1000.0, 3),
    }
    if job.bulk is not None:
        line["bulk"] = job.bulk
    if job.queue_wait is not None:
        line["queue_wait_ms"] = round(job.queue_wait * 1000.0, 3)
    if error_type is not None:
        line["error_type"] = error_type
        line["error"] = redact_text(error or "")[:300]
    if outcome == "success":
        line.update(cached=cached, batch_size=result.get("batch_size"), timings_ms=timings)
    log.info("job %s", json.dumps(line, sort_keys=True))
