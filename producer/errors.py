"""Errors raised by the producer API."""

from __future__ import annotations


class ProducerError(Exception):
    """Base class for every error the producer API raises."""


class JobFailed(ProducerError):
    """Raised when a job ended in FAILURE; `error_type` is one of the contract's error types."""

    def __init__(self, task_id: str, error_type: str, message: str) -> None:
        super().__init__(f"{task_id}: {error_type}: {message}")
        self.task_id = task_id
        self.error_type = error_type
        self.message = message


class ResultTimeout(ProducerError):
    """Raised when a result did not arrive before the caller's deadline."""


class BrokerUnavailable(ProducerError):
    """Raised when Redis cannot be reached for submitting or polling."""
