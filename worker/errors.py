"""The worker's error hierarchy.

Each class name is a public error type of the task contract (see core.contract.ERROR_TYPES):
it is what a failed job's result carries as `exc_type`. Every error takes one argument, a
message a person understands, so it serialises to JSON unchanged. The base and the types the
URL policy raises (InvalidArguments, SourceNotAllowed, FetchFailed) are core.job_errors', shared
with the webhook dispatcher, and re-exported here.
"""

from __future__ import annotations

from core.job_errors import ClassifyError as ClassifyError
from core.job_errors import FetchFailed as FetchFailed
from core.job_errors import InvalidArguments as InvalidArguments
from core.job_errors import SourceNotAllowed as SourceNotAllowed


class SourceNotFound(ClassifyError):
    """Raised when a file, object or bucket does not exist, or a URL answers 404 or 410."""


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
