"""Waiting out a full Redis: a write it refuses for lack of memory is tried again, not failed.

With `maxmemory-policy noeviction` (deploy/redis.conf) a full Redis refuses every write that
needs memory until results expire or an operator raises `maxmemory`. Nothing about the job is
wrong then, so a worker's writes (a result, a retry's message) wait with backoff, telling the
worker (`tell(True)`: it stops fetching and reports not ready) until one goes through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from core.memory import is_out_of_memory

log = logging.getLogger(__name__)

T = TypeVar("T")

# The first wait after a refusal, doubling up to the longest.
FIRST_WAIT_S = 0.1
MAX_WAIT_S = 5.0


def telling(app: Any, store: str) -> Callable[[bool], None]:
    """What tells `app`'s worker that Redis refuses (True) or takes again (False) the writes to
    `store` ("broker" or "results"): the app's `on_redis_full` hook, if it has one."""

    def tell(full: bool) -> None:
        hook = getattr(app, "on_redis_full", None)
        if hook is not None:
            hook(store, full)

    return tell


def retry_while_full(call: Callable[[], T], tell: Callable[[bool], None], what: str) -> T:
    """`call()`, tried again with backoff for as long as Redis refuses it for lack of memory."""
    wait = FIRST_WAIT_S
    full = False
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if not full:
                log.warning("Redis is full: %s waits until memory returns (%s)", what, exc)
                full = True
            tell(True)
            time.sleep(wait)
            wait = min(wait * 2, MAX_WAIT_S)
            continue
        if full:
            log.warning("Redis takes %s again", what)
            tell(False)
        return result
