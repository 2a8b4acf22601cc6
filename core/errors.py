"""Errors raised by the producer API."""

from __future__ import annotations

from typing import Any


class ProducerError(Exception):
    """Base class for every error the producer API raises."""


class JobFailed(ProducerError):
    """Raised when a job ended in FAILURE; `error_type` is one of the contract's error types."""

    def __init__(self, task_id: str, error_type: str, message: str) -> None:
        super().__init__(f"{task_id}: {error_type}: {message}")
        self.task_id = task_id
        self.error_type = error_type
        self.message = message


class ConfigError(ProducerError):
    """Raised when REDIS_URL, RESULT_URL or another Redis setting is malformed (a usage error:
    nothing was asked of Redis)."""


class ResultTimeout(ProducerError):
    """Raised when a result did not arrive before the caller's deadline. From `Client.wait`,
    `unfinished` holds the jobs it had not yielded, each with the last state read of it
    (producer.client.Outcome; PENDING when none was)."""

    unfinished: tuple[Any, ...] = ()


class BrokerUnavailable(ProducerError):
    """Raised when Redis cannot be reached for submitting or polling (or what answers is not
    Redis). From `Client.wait`, `unfinished` as for ResultTimeout."""

    unfinished: tuple[Any, ...] = ()


class UnknownGroup(ProducerError):
    """No such group: never created, or expired with its results."""


class RedisFull(ProducerError):
    """Raised when Redis is at maxmemory and refuses new work (`maxmemory-policy noeviction`)."""

    def __init__(
        self, used_memory: int | None, maxmemory: int | None, policy: str | None = None
    ) -> None:
        from core.memory import format_bytes

        if used_memory is not None and maxmemory:
            usage = f"used {format_bytes(used_memory)} of maxmemory {format_bytes(maxmemory)}"
        else:  # INFO not allowed to this user: Redis' own words
            usage = "used memory > maxmemory"
        super().__init__(
            f"Redis is full: {usage} ({policy or 'noeviction'}); new work is refused until "
            "memory is freed or raised"
        )
        self.used_memory = used_memory
        self.maxmemory = maxmemory
        self.policy = policy


class QueueFull(ProducerError):
    """Raised when a submit would take a queue past the depth limit an operator set."""

    def __init__(self, queue: str, depth: int, limit: int, adding: int) -> None:
        super().__init__(
            f"queue {queue!r} is full: {depth} messages waiting, limit {limit}; refused "
            f"{adding} more (nothing was sent). Raise it with `imgqueue limits set {queue} N` "
            f"or remove it with `imgqueue limits clear {queue}`"
        )
        self.queue = queue
        self.depth = depth
        self.limit = limit
        self.adding = adding


class UnknownModel(ProducerError):
    """Raised when a submit names a model that no worker has registered (`imgqueue model list`)."""

    def __init__(self, model: str, known: list[str]) -> None:
        shown = ", ".join(repr(k) if k else "the default model" for k in known) or "none"
        what = f"model {model!r}" if model else "the default model"
        super().__init__(
            f"no worker serves {what}: none has registered on this Redis (nothing was sent). "
            f"Registered: {shown}. A worker registers once it is ready: start one with "
            f"MODEL_NAME={model or '<name>'} or a MODEL_CARD naming it"
        )
        self.model = model
        self.known = known


class InvalidSource(ProducerError, ValueError):
    """Raised at submit when a source breaks the contract (empty, longer than MAX_SOURCE_CHARS,
    control characters): nothing was sent. `index` is its position among the sources given."""

    def __init__(self, source: str, index: int, reason: str) -> None:
        shown = source if len(source) <= 80 else source[:77] + "..."
        super().__init__(f"source #{index + 1} {shown!r}: {reason} (nothing was sent)")
        self.source = source
        self.index = index
        self.reason = reason


class UploadTooLarge(ProducerError, ValueError):
    """Raised at submit when image bytes (`Client.submit(bytes)`, a file object) are over
    UPLOAD_MAX_BYTES: nothing was sent. `index` is its position among the sources given; `size`
    its length in bytes, or None where only "more than `limit`" is known (a file read no
    further)."""

    def __init__(self, index: int, size: int | None, limit: int) -> None:
        what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(
            f"upload #{index + 1}: {what}, over UPLOAD_MAX_BYTES ({limit}) (nothing was sent)"
        )
        self.index = index
        self.size = size
        self.limit = limit


class Forbidden(ProducerError):
    """Raised when a tenant's submit names a queue or model the tenant may not use
    (core/tenants.py): nothing was sent."""

    def __init__(self, tenant: str, what: str, name: str, allowed: tuple[str, ...]) -> None:
        shown = ", ".join(repr(a) for a in allowed)
        super().__init__(
            f"tenant {tenant!r} may not use {what} {name!r} (nothing was sent); its {what}s: "
            f"{shown}"
        )
        self.tenant = tenant
        self.what = what
        self.name = name
        self.allowed = allowed


class TenantQuotaExceeded(ProducerError):
    """Raised when a tenant's submit would take its unfinished jobs past its `max_queued`
    (core/tenants.py): nothing was sent. `retry_after`: seconds worth waiting before
    trying again, as jobs end (an HTTP Retry-After)."""

    def __init__(
        self, tenant: str, queued: int, limit: int, adding: int, retry_after: int = 5
    ) -> None:
        never = " (more than the quota itself: send fewer at once)" if adding > limit else ""
        super().__init__(
            f"tenant {tenant!r} is at its quota: {queued} unfinished jobs, max_queued {limit}; "
            f"refused {adding} more{never} (nothing was sent)"
        )
        self.tenant = tenant
        self.queued = queued
        self.limit = limit
        self.adding = adding
        self.retry_after = retry_after


class ObjectStoreError(ProducerError):
    """Raised when an object store (`s3://`, `gs://`, `az://`; core/objects.py) fails a
    listing, read or write: unreachable, timed out, or an error status. `url` is the object or
    prefix asked for. Subclasses say when retrying the same call cannot help."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class ObjectNotFound(ObjectStoreError):
    """Raised when the bucket, or the object read, does not exist."""


class ObjectAccessDenied(ObjectStoreError):
    """Raised when the credentials may not list, read or write there, or none were found."""


class ObjectsNotInstalled(ConfigError):
    """Raised on meeting an object-store URL without obstore installed (the `objects` extra)."""


class BatchConflict(ConfigError):
    """Raised by `imgqueue batch` (producer/batch.py) before anything is sent or overwritten:
    an --out that is not this batch's own (a user's file, another batch's output), a batch to
    resume that is not there, or sources that changed since the batch began."""
