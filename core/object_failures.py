"""What went wrong with an object store, from obstore's errors: one kind callers branch on
(the worker's contract errors, the producer's exceptions), and one line naming the URL that
never quotes the store's own text (it may carry request headers).

obstore raises FileNotFoundError, PermissionDeniedError and the like for a GET, but a
listing's errors are all GenericError: the HTTP status and S3 error code in their text tell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ObjectAccessDenied, ObjectNotFound, ObjectStoreError

KINDS = (
    "no-object",  # the object does not exist
    "no-bucket",  # nor does its bucket (container)
    "denied",  # 401/403: these credentials may not
    "credentials",  # no credentials were found (nor an instance role)
    "timeout",  # the request passed its deadline
    "unavailable",  # connection refused or reset, 429, 5xx: worth a retry
    "invalid",  # a key the store refuses as a path
    "failed",  # another error status
)
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>(\w+)</Code>")
_NO_BUCKET = ("NoSuchBucket", "ContainerNotFound")


@dataclass(frozen=True)
class Failure:
    """`kind` is one of KINDS; `detail` the status and code, or what failed."""

    kind: str
    detail: str
    transient: bool


def classify(exc: BaseException, *, listing: bool = False) -> Failure:
    """An obstore error's kind, from its type and the status and S3 code its text carries.
    `listing`: a 404 to a listing can only mean the bucket."""
    from obstore.exceptions import InvalidPathError, PermissionDeniedError, UnauthenticatedError

    text = str(exc)
    status_match, code_match = _STATUS.search(text), _CODE.search(text)
    status = int(status_match.group(1)) if status_match else 0
    code = code_match.group(1) if code_match else ""
    shown = " ".join(p for p in (f"HTTP {status}" if status else "", code) if p)
    # No answer from the store itself, but from the credentials' source (instance metadata).
    if not code and ("169.254.169.254" in text or "credential" in text.lower()):
        return Failure("credentials", shown or "none found", False)
    if code in _NO_BUCKET or "bucket does not exist" in text.lower():
        return Failure("no-bucket", shown, False)
    if isinstance(exc, FileNotFoundError) or status in (404, 410):
        return Failure("no-bucket" if listing else "no-object", shown, False)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
        return Failure("denied", shown or "access denied", False)
    if isinstance(exc, InvalidPathError):
        return Failure("invalid", "not a valid object key", False)
    if "Timeout" in text or "TimedOut" in text or "timed out" in text:
        return Failure("timeout", "timed out", True)
    if status == 429 or status >= 500:
        return Failure("unavailable", shown, True)
    if status:
        return Failure("failed", shown, False)
    # No status: the request never got an answer (refused, reset, DNS): worth a retry.
    reason = "connection failed" if "connect" in text.lower() else type(exc).__name__
    return Failure("unavailable", reason, True)


def describe(failure: Failure, url: str, bucket: str, what: str = "object") -> str:
    """One line for the failure of `url` (in `bucket`)."""
    scheme = url.partition("://")[0]
    if failure.kind == "no-bucket":
        return f"bucket {bucket!r} does not exist ({scheme}://{bucket})"
    if failure.kind == "no-object":
        return f"no such {what}: {url}"
    if failure.kind == "denied":
        return f"access denied to {url} ({failure.detail}): check the credentials' permissions"
    if failure.kind == "credentials":
        return (
            f"no credentials for {scheme}:// ({failure.detail}): set the store's credential"
            " variables (docs/objects.md) or run with a role"
        )
    if failure.kind == "invalid":
        return f"{url}: not a valid object key"
    return f"{what} {url}: {failure.kind}, {failure.detail}"


def producer_error(
    exc: BaseException, url: str, bucket: str, *, listing: bool = False
) -> ObjectStoreError:
    """The producer's exception for an obstore error."""
    failure = classify(exc, listing=listing)
    message = describe(failure, url, bucket, "prefix" if listing else "object")
    if failure.kind in ("no-object", "no-bucket"):
        return ObjectNotFound(message, url)
    if failure.kind in ("denied", "credentials"):
        return ObjectAccessDenied(message, url)
    return ObjectStoreError(message, url)
