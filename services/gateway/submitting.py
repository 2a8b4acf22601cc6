"""A submit, from its request body to the answer: read and validate the body (JSON, or a
multipart upload), then, in a worker thread, submit through the producer's Client, once per
Idempotency-Key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import Request
from pydantic import ValidationError

from core.contract import source_problem
from core.errors import ProducerError
from core.objects import is_prefix
from core.tenants import Tenant
from services.gateway import idempotency, problems, uploads
from services.gateway.body_limits import is_multipart
from services.gateway.idempotency import Answer
from services.gateway.resources import Resources
from services.gateway.schemas import SubmitOptions, SubmitRequest, Submitted
from services.gateway.settings import GatewaySettings

log = logging.getLogger("imgqueue.gateway")


@dataclass(frozen=True)
class Submission:
    """What to submit: URLs or paths, or uploaded bytes; `single` answers with `id`."""

    sources: list[str | bytes]
    options: SubmitOptions
    single: bool
    digest: str  # the body's meaning, for Idempotency-Key
    field: str = "sources"  # what a bad source is called in an error


async def read(request: Request, settings: GatewaySettings) -> Submission:
    """The request's body, whole (services/gateway/body_limits.py caps its size and time)."""
    if is_multipart(request.headers):
        return await _read_upload(request, settings)
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise problems.Problem(415, "send application/json, or multipart/form-data with files")
    body = await request.body()
    try:
        parsed = SubmitRequest.model_validate_json(body)
    except ValidationError as exc:
        raise problems.field_errors(exc.errors()) from None
    single = parsed.source is not None
    return Submission(
        sources=list(parsed.listed()),
        options=parsed,
        single=single,
        digest=idempotency.digest(parsed.model_dump(mode="json")),
        field="source" if single else "sources",
    )


async def _read_upload(request: Request, settings: GatewaySettings) -> Submission:
    """Files in `file` parts; options as text fields or query parameters (a field wins)."""
    form = await uploads.read_form(request, settings)
    options = parse_options({**request.query_params, **form.fields})
    hashes = [[name, hashlib.sha256(data).hexdigest()] for name, data in form.files]
    return Submission(
        sources=[data for _, data in form.files],
        options=options,
        single=len(form.files) == 1,
        digest=idempotency.digest({"files": hashes, **options.model_dump(mode="json")}),
    )


def parse_options(query: Mapping[str, str]) -> SubmitOptions:
    try:
        # Form fields and query parameters are text: "5" is 5 here, unlike in a JSON body.
        return SubmitOptions.model_validate(dict(query), strict=False)
    except ValidationError as exc:
        raise problems.field_errors(exc.errors()) from None


def answer(resources: Resources, tenant: Tenant, submission: Submission, key: str | None) -> Answer:
    """Submit, or replay the answer an earlier request with the same key had."""
    if key is None:
        return submit(resources, tenant, submission)
    client = resources.client
    claim = idempotency.claim(client.redis, client.config, tenant.name, key, submission.digest)
    if claim.replay is not None:
        return claim.replay
    try:
        done = submit(resources, tenant, submission)
    except BaseException:
        with contextlib.suppress(redis.RedisError, OSError):
            claim.release()  # let a retry submit
        raise
    try:
        claim.store(done)
    except (redis.RedisError, OSError) as exc:  # submitted: answer so, whatever the store
        log.warning("could not store an idempotent answer: %s", exc)
    return done


def submit(resources: Resources, tenant: Tenant, submission: Submission) -> Answer:
    for index, source in enumerate(submission.sources):
        problem = source_problem(source) if isinstance(source, str) else None
        if problem is None and isinstance(source, str) and is_prefix(source):
            # Listed with the gateway's credentials, it would show any tenant the bucket's keys.
            problem = "a prefix (ending in /) is listed by `imgqueue submit`, not the gateway"
        if problem is not None:
            where = submission.field if submission.single else f"sources.{index}"
            raise problems.Problem(
                422,
                f"{where}: {problem}",
                type="InvalidSource",
                errors=[problems.FieldError(field=where, message=problem)],
            )
    options: dict[str, Any] = submission.options.model_dump(exclude={"source", "sources"})
    try:
        ids = resources.client.submit_many(submission.sources, tenant=tenant, **options)
    except ProducerError:
        raise
    except ValueError as exc:  # options that disagree (a queue and a model)
        raise problems.Problem(422, str(exc)) from None
    group = getattr(ids, "group_id", None)
    body = Submitted(id=ids[0]) if submission.single else Submitted(ids=list(ids))
    body.group = group
    location = None
    if group is not None:
        location = f"/v1/groups/{group}"
    elif submission.single:
        location = f"/v1/jobs/{ids[0]}"
    return Answer(202, body.model_dump(exclude_none=True), location)
