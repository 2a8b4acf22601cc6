"""Faults the test suite injects into real worker processes; nothing else uses them.

Each is off unless the worker's environment switches it on (read into Settings with the
rest; tests/system/test_faults.py sets them):

- TEST_POISON_SOURCE=<source>: a job for exactly that source SIGKILLs its own worker process,
  as a crashing decoder or the OOM killer would (delivery counting, MAX_DELIVERIES).
- TEST_FATAL_INFERENCE_AFTER=<n>: inference raises a fatal error from the n-th batch on, as a
  dead GPU would (the worker stops being ready and exits).
- TEST_KILL_AFTER_RESULT=1: on a Redis Cluster result store, the worker SIGKILLs itself right
  after its first final states are stored, before their events are (worker/outbox.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

from worker.settings import Settings

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


def maybe_poison(source: str, settings: Settings) -> None:
    """TEST_POISON_SOURCE: SIGKILL this worker process when the job's source is that one."""
    if settings.test_poison_source and source == settings.test_poison_source:
        log.critical("TEST_POISON_SOURCE matched: killing this worker process (tests only)")
        os.kill(os.getpid(), signal.SIGKILL)


def kill_after_result(app: Any) -> None:
    """TEST_KILL_AFTER_RESULT: SIGKILL this worker process now (a cluster's store calls it
    between the results and their events). `app`: the worker's Celery app, or any other."""
    settings = getattr(app, "settings", None)
    if isinstance(settings, Settings) and settings.test_kill_after_result:
        log.critical("TEST_KILL_AFTER_RESULT: killing this worker after its results (tests only)")
        os.kill(os.getpid(), signal.SIGKILL)


def fatal_inference(infer: Callable[[In], Out], settings: Settings) -> Callable[[In], Out]:
    """TEST_FATAL_INFERENCE_AFTER: `infer`, failing fatally from that batch on (else as is)."""
    after = settings.test_fatal_inference_after
    if not after:
        return infer
    batches = itertools.count(1)

    def failing(batch: In) -> Out:
        if next(batches) >= after:
            raise SystemError("TEST_FATAL_INFERENCE_AFTER: a simulated fatal error (tests)")
        return infer(batch)

    return failing
