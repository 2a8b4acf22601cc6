"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the gateway answers has the same shape: `type` is a stable name a client branches
on (the producer's error class, e.g. "QueueFull", or one of this module's: "Unauthorized",
"NotFound", "ValidationError", "PayloadTooLarge", "Unavailable"...), `title` the status' phrase,
`status`, `detail` a sentence for people, and for a 422 `errors`: each field and what is wrong
with it. Errors a retry can outlive (429, 503) carry Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from core.connections import result_store_errors
from core.errors import (
    BrokerUnavailable,
    Forbidden,
    InvalidSource,
    ObjectStoreError,
    ProducerError,
    QueueFull,
    RedisFull,
    TenantQuotaExceeded,
    UnknownGroup,
    UnknownModel,
    UploadTooLarge,
)
from core.memory import is_out_of_memory
from core.webhooks import InvalidWebhook

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("imgqueue.gateway")

# Seconds a client should wait before trying again.
RETRY_QUEUE_FULL_S = 5
RETRY_REDIS_FULL_S = 30
RETRY_UNAVAILABLE_S = 5

# The type of an error answered with only a status (a route that does not exist, ...).
TYPES_BY_STATUS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalError",
    503: "Unavailable",
}


class FieldError(BaseModel):
    field: str
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (the body of every error)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Problem(HTTPException):
    """An error to answer as problem details; raise it anywhere in a request."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, detail, dict(headers or {}))
        self.type = type or TYPES_BY_STATUS.get(status, HTTPStatus(status).phrase)
        self.errors = list(errors)


def not_found(what: str, ident: str) -> Problem:
    """The one answer for an id that is unknown or another tenant's: no way to tell them apart."""
    return Problem(404, f"no {what} {ident!r}")


def response(problem: Problem) -> JSONResponse:
    body = ProblemDetails(
        type=problem.type,
        title=HTTPStatus(problem.status_code).phrase,
        status=problem.status_code,
        detail=str(problem.detail),
        errors=problem.errors or None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status_code,
        headers=problem.headers,
        media_type=MEDIA_TYPE,
    )


def field_errors(errors: Sequence[Any]) -> Problem:
    """A 422 naming each field pydantic refused (`sources.2`, `top_k`, `wait`; `body` for
    JSON that does not parse)."""
    fields = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        ctx = error.get("ctx") or {}
        if error.get("type") == "json_invalid":
            loc = []  # a position in the text, not a field
            if ctx.get("error") and str(ctx["error"]) not in message:
                message = f"{message}: {ctx['error']}"
        fields.append(FieldError(field=".".join(loc) or "body", message=message))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return Problem(422, detail or "invalid request", errors=fields)


def from_error(exc: BaseException) -> Problem | None:
    """The problem a producer or Redis error answers with; None for a bug."""
    if isinstance(exc, RedisFull) or is_out_of_memory(exc):
        detail = str(exc) if isinstance(exc, RedisFull) else "Redis is full; try again later"
        return Problem(
            503, detail, type="RedisFull", headers={"Retry-After": str(RETRY_REDIS_FULL_S)}
        )
    if isinstance(exc, QueueFull):
        retry = {"Retry-After": str(RETRY_QUEUE_FULL_S)}
        return Problem(429, str(exc), type="QueueFull", headers=retry)
    if isinstance(exc, TenantQuotaExceeded):
        retry = {"Retry-After": str(exc.retry_after)}
        return Problem(429, str(exc), type="TenantQuotaExceeded", headers=retry)
    if isinstance(exc, Forbidden):
        return Problem(403, str(exc), type="Forbidden")
    if isinstance(exc, InvalidSource):
        field = FieldError(field=f"sources.{exc.index}", message=exc.reason)
        return Problem(422, str(exc), type="InvalidSource", errors=[field])
    if isinstance(exc, InvalidWebhook):
        field = FieldError(field="webhook", message=str(exc))
        return Problem(422, str(exc), type="InvalidWebhook", errors=[field])
    if isinstance(exc, UnknownModel):
        field = FieldError(field="model", message=str(exc))
        return Problem(422, str(exc), type="UnknownModel", errors=[field])
    if isinstance(exc, UploadTooLarge):
        return Problem(413, str(exc))
    if isinstance(exc, UnknownGroup):
        return Problem(404, str(exc))
    if isinstance(exc, (BrokerUnavailable, OperationalError, *result_store_errors())):
        # Where Redis is and why it failed is the operator's business: the log says it.
        log.warning("Redis cannot be reached: %s", exc)
        retry = {"Retry-After": str(RETRY_UNAVAILABLE_S)}
        return Problem(503, "Redis cannot be reached; try again later", headers=retry)
    if isinstance(exc, ObjectStoreError):  # UPLOAD_URL's store: the operator's to fix
        log.warning("the upload store failed: %s", exc)
        retry = {"Retry-After": str(RETRY_UNAVAILABLE_S)}
        return Problem(503, "the upload store (UPLOAD_URL) failed; try again later", headers=retry)
    if isinstance(exc, ProducerError):
        return Problem(422, str(exc))
    return None


def install(app: FastAPI) -> None:
    """Answer every error of `app` as problem details."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, Problem):
            return response(exc)
        assert isinstance(exc, HTTPException)
        return response(Problem(exc.status_code, str(exc.detail), headers=exc.headers))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return response(field_errors(exc.errors()))

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        problem = from_error(exc)
        if problem is None:
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            problem = Problem(500, "an unexpected error; the gateway's log has it")
        return response(problem)

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette raises it again after this answer, and uvicorn logs its traceback.
        return response(Problem(500, "an unexpected error; the gateway's log has it"))

    app.add_exception_handler(HTTPException, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    for kind in (ProducerError, redis.RedisError, OperationalError, OSError):
        app.add_exception_handler(kind, on_error)
    app.add_exception_handler(Exception, on_bug)
