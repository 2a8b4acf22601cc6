"""The exit statuses of `imgqueue`: the one table of what each means and which errors end in it.

cli/main.py's `main()` maps an error to its status with `status_for`, and writes the
table into its `--help`; docs/producing.md's table must say the same (a test compares them).
"""

from __future__ import annotations

from enum import IntEnum

from kombu.exceptions import OperationalError
from redis.exceptions import RedisClusterException, RedisError

from core.errors import (
    ConfigError,
    Forbidden,
    InvalidSource,
    ObjectAccessDenied,
    ObjectNotFound,
    ProducerError,
    QueueFull,
    RedisFull,
    TenantQuotaExceeded,
    UnknownGroup,
    UnknownModel,
    UploadTooLarge,
)


class ExitStatus(IntEnum):
    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    UNAVAILABLE = 3
    REDIS_FULL = 4
    QUEUE_FULL = 5
    UNKNOWN_MODEL = 6
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `yes | head -1`'s yes


MEANINGS: dict[ExitStatus, str] = {
    ExitStatus.OK: (
        "every job succeeded (or was only submitted; `cancel`: every job was cancelled)"
    ),
    ExitStatus.JOB_FAILED: (
        "some job failed (`results`: or has not ended; `cancel`: some job was too late, or unknown)"
    ),
    ExitStatus.USAGE: (
        "usage error: a bad argument or source, a malformed REDIS_URL or RESULT_URL, an "
        "unknown group, a queue or model the tenant may not use, an object-store bucket that "
        "does not exist or may not be listed"
    ),
    ExitStatus.UNAVAILABLE: (
        "Redis unreachable (or not Redis), results did not arrive in time, or another I/O error "
        "(an object store unreachable included)"
    ),
    ExitStatus.REDIS_FULL: (
        "Redis is full (maxmemory reached with noeviction): nothing was submitted, or only the "
        "jobs whose ids were printed"
    ),
    ExitStatus.QUEUE_FULL: (
        "the queue is at the depth limit an operator set (`imgqueue limits`), or the tenant "
        "at its max_queued: nothing was submitted"
    ),
    ExitStatus.UNKNOWN_MODEL: (
        "no worker serves the model named with `--model` (`imgqueue model list`): nothing was "
        "submitted"
    ),
    ExitStatus.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitStatus.BROKEN_PIPE: (
        "stdout was closed early (e.g. piped into `head`): the rest of the output was "
        "dropped, quietly"
    ),
}

# Each error and its status; the first that matches counts (subclasses before their bases).
# Redis' and kombu's own errors are what a server that is not Redis (or a dropped connection
# no wrapper caught) raises. BrokenPipeError and KeyboardInterrupt are main()'s own cases.
ERRORS: tuple[tuple[type[BaseException], ExitStatus], ...] = (
    (RedisFull, ExitStatus.REDIS_FULL),
    (QueueFull, ExitStatus.QUEUE_FULL),
    (TenantQuotaExceeded, ExitStatus.QUEUE_FULL),
    (UnknownModel, ExitStatus.UNKNOWN_MODEL),
    (InvalidSource, ExitStatus.USAGE),
    (UploadTooLarge, ExitStatus.USAGE),
    (ConfigError, ExitStatus.USAGE),
    (UnknownGroup, ExitStatus.USAGE),
    (Forbidden, ExitStatus.USAGE),
    (ObjectNotFound, ExitStatus.USAGE),
    (ObjectAccessDenied, ExitStatus.USAGE),
    (ProducerError, ExitStatus.UNAVAILABLE),
    (RedisError, ExitStatus.UNAVAILABLE),
    (RedisClusterException, ExitStatus.UNAVAILABLE),
    (OperationalError, ExitStatus.UNAVAILABLE),
    (OSError, ExitStatus.UNAVAILABLE),
)


def status_for(exc: BaseException) -> ExitStatus | None:
    """The exit status `exc` ends the command with; None for an error no table entry covers
    (a bug: its traceback is what helps)."""
    for kind, status in ERRORS:
        if isinstance(exc, kind):
            return status
    return None


def describe() -> str:
    """The table as `--help` shows it."""
    return "\n".join(f"  {int(s):>3}  {MEANINGS[s]}" for s in ExitStatus)
