"""Reading `s3://`, `gs://` and `az://` sources: one GET, under the same caps as a URL fetch.

The object's size comes with the GET's answer, before its body: one over MAX_IMAGE_BYTES fails
`TooLarge` unread. Each request has FETCH_CONNECT_TIMEOUT to connect and FETCH_TOTAL_TIMEOUT in
all, body included, and the store retries nothing itself: a transient failure is the job's to
retry (FETCH_RETRIES), as for a URL. The stores (core/objects.py) are made once per bucket
and process, with the credentials of the worker's environment (docs/objects.md).

Only the bucket and key come from the job: the host is the store's (AWS, or S3_ENDPOINT_URL),
so an object source cannot reach an arbitrary address as a URL could.
"""

from __future__ import annotations

import time

from core import object_failures, objects
from core.errors import ConfigError, ObjectsNotInstalled
from worker.errors import ClassifyError, FetchFailed, SourceNotAllowed, SourceNotFound, TooLarge
from worker.files import too_large
from worker.settings import Settings

TIMEOUT = "the object's download took longer than FETCH_TOTAL_TIMEOUT"


def options(settings: Settings) -> objects.StoreOptions:
    """The worker's store options: the fetch timeouts, and no retries of the store's own."""
    return objects.StoreOptions(
        endpoint=settings.s3_endpoint_url,
        connect_timeout=settings.fetch_connect_timeout,
        timeout=settings.fetch_total_timeout,
        retries=0,
    )


def read_object(url: str, settings: Settings) -> bytes:
    """The object's bytes, or a documented error (docs/objects.md, *Errors*)."""
    try:
        location = objects.parse(url)
    except ValueError as exc:
        raise SourceNotAllowed(str(exc)) from None
    if not location.key or location.key.endswith("/"):
        raise SourceNotAllowed(f"{url!r} names a prefix, not an object: submit its objects")
    try:
        store = objects.store_for(location, options(settings))
    except ObjectsNotInstalled as exc:
        raise SourceNotAllowed(str(exc)) from None
    except ConfigError as exc:  # the worker's environment: no retry helps
        raise FetchFailed(str(exc)) from None
    import obstore

    deadline = time.monotonic() + settings.fetch_total_timeout
    cap = settings.max_image_bytes
    try:
        result = obstore.get(store, location.key)
        size = int(result.meta["size"])
        if size > cap:  # known before a byte of the body is read
            raise TooLarge(too_large(size, cap))
        data = bytes(result.bytes())
    except ClassifyError:
        raise
    except Exception as exc:
        raise error_for(exc, location) from None
    if len(data) > cap:  # a store whose size was wrong
        raise TooLarge(f"the object's body passed {cap} bytes (MAX_IMAGE_BYTES)")
    if time.monotonic() > deadline:
        raise FetchFailed(TIMEOUT, transient=True)
    return data


def error_for(exc: BaseException, location: objects.ObjectURL) -> ClassifyError:
    """The contract's error for an obstore error (core.object_failures' kinds)."""
    failure = object_failures.classify(exc)
    message = object_failures.describe(failure, str(location), location.bucket)
    if failure.kind in ("no-object", "no-bucket"):
        return SourceNotFound(message)
    if failure.kind == "invalid":
        return SourceNotAllowed(message)
    if failure.kind == "timeout":
        return FetchFailed(f"{TIMEOUT} ({location})", transient=True)
    return FetchFailed(message, transient=failure.transient)
