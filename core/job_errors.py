"""The contract's error types that code outside the worker raises too.

Each class name is a public error type of the task contract (core.contract.ERROR_TYPES): what a
failed job's result carries as `exc_type`. These are the ones the URL policy raises
(core/urls.py, core/vetted_http.py), which the worker's fetches and the webhook dispatcher's
POSTs share; worker/errors.py declares the rest on the same base and re-exports these. Every
error takes one argument, a message a person understands, so it serialises to JSON unchanged.

A stored failure names its class's module (`exc_module`, from which Celery's clients rebuild
the exception): these keep the one they had, worker.errors, so a result says the same module
for every error type, whichever package declares it.
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


class FetchFailed(ClassifyError):
    """Raised when a URL or object cannot be fetched: network error, timeout, an HTTP error
    status, or an object store's refusal (access denied, no credentials)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        # Only the message travels in the result; `transient` steers retries inside the worker.
        self.transient = transient


# The stored `exc_module` (see the module doc): worker.errors re-exports these.
for _error in (ClassifyError, InvalidArguments, SourceNotAllowed, FetchFailed):
    _error.__module__ = "worker.errors"
del _error
