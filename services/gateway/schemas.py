"""The API's request and response bodies: pydantic models, which make the OpenAPI document.

Requests are validated strictly (`"top_k": "5"` or `true` is refused, naming the field), and
an unknown field is refused too: a typo must not pass silently for a default.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from core.contract import DEFAULT_TOP_K, MAX_PRIORITY, MAX_TOP_K, MIN_PRIORITY
from core.models import check_name
from core.webhooks import check_webhook
from producer.cancel import deadline_at

MAX_SOURCES = 10_000  # per request; MAX_JSON_BYTES bounds them too
_TIME = TypeAdapter(datetime)  # ISO 8601, as pydantic reads it


class SubmitOptions(BaseModel):
    """How to run the jobs (for a multipart upload: as query parameters)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="predictions per image")
    model: str | None = Field(
        None, description="the model to run (`imgqueue model list`); default: the default model"
    )
    queue: str | None = Field(None, description="the queue to send to; default: `celery`")
    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 (highest, the default) .. 9"
    )
    deadline: float | datetime | None = Field(
        None,
        description="seconds from now, or an ISO 8601 time (no offset: the gateway's local "
        "time): a job no worker has started by then ends REVOKED with error type `Expired`",
        examples=[300, "2030-01-02T03:04:05Z"],
    )
    webhook: str | None = Field(
        None, description="an http(s) URL each job's result is POSTed to when it ends, signed"
    )
    group: bool = Field(False, description="make the jobs one group (GET /v1/groups/{id})")

    @field_validator("deadline", mode="before")
    @classmethod
    def _when(cls, value: Any) -> Any:
        """Seconds (a number, or a string of one: "30" is not 30 s after 1970) or a time."""
        if value is None or isinstance(value, datetime):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
            with contextlib.suppress(ValueError):  # pydantic's ValidationError is one
                return _TIME.validate_python(value)
        raise ValueError("deadline must be seconds from now or an ISO 8601 time")

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: float | datetime | None) -> float | datetime | None:
        deadline_at(value)  # ValueError: not positive, or already passed
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return value if not value else check_name(value)

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook(value)


class SubmitRequest(SubmitOptions):
    """One source or a list of them: URLs, or paths under the workers' IMAGE_ROOT."""

    source: str | None = Field(None, examples=["https://example.com/cat.jpg"])
    sources: list[str] | None = Field(None, min_length=1, max_length=MAX_SOURCES)

    @model_validator(mode="after")
    def _one_of(self) -> SubmitRequest:
        if (self.source is None) == (self.sources is None):
            raise ValueError("give either `source` or `sources` (a list), not both nor neither")
        return self

    def listed(self) -> list[str]:
        return [self.source] if self.source is not None else list(self.sources or ())


class Submitted(BaseModel):
    """`id` for one source; `ids` (in order) for a list, and `group` when made a group."""

    id: str | None = None
    ids: list[str] | None = None
    group: str | None = None


class JobError(BaseModel):
    type: str = Field(description="the contract's error type (docs/contract.md), e.g. Expired")
    message: str


class Job(BaseModel):
    id: str
    state: str = Field(
        description="PENDING (queued), STARTED, RETRY; final: SUCCESS, FAILURE, REVOKED",
        examples=["SUCCESS"],
    )
    tenant: str
    created: float | None = Field(
        None, description="epoch seconds it was submitted, while it has not ended"
    )
    finished: str | None = Field(None, description="when it ended (ISO 8601, UTC)")
    result: dict[str, Any] | None = Field(None, description="the contract's result (SUCCESS)")
    error: JobError | None = None


class CancelOutcome(BaseModel):
    id: str
    outcome: Literal["cancelled", "too-late"] = Field(
        description="cancelled: it ends REVOKED (Cancelled), never run; too-late: it had "
        "started or ended, and ends as it would have"
    )
    state: str = Field(description="the state the cancel found it in")


class Group(BaseModel):
    id: str
    tenant: str
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    finished: int
    progress: float = Field(description="finished / total, 0..1")
    done: bool
    eta_seconds: float | None
    rate_per_second: float | None
    created: float
    first_done: float | None
    completed: float | None
    queue: str
    model: str
    webhook: str | None
