"""The worker's error hierarchy.

Each class name is a public error type of the task contract (see core.contract.ERROR_TYPES):
it is what a failed job's result carries as `exc_type`. Every error takes one argument, a
message a person understands, so it serialises to JSON unchanged.
"""

from __future__ import annotations


class ClassifyError(Exception):
    """Base class for errors that end a job in FAILURE with a documented type."""

    #: Whether retrying the same job later could succeed.
    transient = False


class InvalidArguments(ClassifyError):
    """Raised when the task is called with arguments outside the contract."""


class SourceNotAllowed(ClassifyError):
    """Raised when a source is a forbidden scheme or address, or a path outside IMAGE_ROOT."""


class SourceNotFound(ClassifyError):
    """Raised when a file, object or bucket does not exist, or a URL answers 404 or 410."""


class FetchFailed(ClassifyError):
    """Raised when a URL or object cannot be fetched: network error, timeout, an HTTP error
    status, or an object store's refusal (access denied, no credentials)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        # Only the message travels in the result; `transient` steers retries inside the worker.
        self.transient = transient


class TooLarge(ClassifyError):
    """Raised when an image is over the byte or pixel limit."""


class NotAnImage(ClassifyError):
    """Raised when bytes cannot be decoded as an image (empty, truncated, corrupt)."""


class DecodeTimeout(ClassifyError):
    """Raised when decoding an image takes longer than its deadline (DECODE_TIMEOUT)."""


class UnsupportedFormat(ClassifyError):
    """Raised when an image's format is outside the allowed list."""


class InferenceUnavailable(ClassifyError):
    """Raised when the worker's inference thread died or hung; the job is retried elsewhere."""

    transient = True


class JobLost(ClassifyError):
    """Raised when a job was delivered more times than allowed without finishing."""


class Cancelled(ClassifyError):
    """Raised when a job was cancelled before it started; it ends REVOKED, never run."""


class Expired(ClassifyError):
    """Raised when a job was not started by its deadline; it ends REVOKED, never run."""


class InternalError(ClassifyError):
    """Raised when the worker fails in a way no other type describes."""


class ConfigError(Exception):
    """Raised when a setting read from the environment is missing or invalid."""


class WeightsUnavailable(Exception):
    """Raised when the configured model weights cannot be loaded; the worker refuses to start."""
