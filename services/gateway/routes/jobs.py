"""POST /v1/jobs, GET /v1/jobs/{id}[?wait=N], POST /v1/jobs/{id}/cancel.

Submits go through `Client.submit_many(..., tenant=...)`, so the contract (sources, options,
ids, headers, admission, quotas) is written once, in the producer. Reading the body and
waiting happen on the event loop; the Redis calls, which are sync, in the thread pool, each
for the time of one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core.states import FINAL_STATES
from core.tenants import JOB_COUNT_TTL_S, Tenant, jobs_key
from services.gateway import problems, submitting
from services.gateway.auth import CurrentTenant
from services.gateway.idempotency import HEADER as IDEMPOTENCY_HEADER
from services.gateway.resources import Res, Resources
from services.gateway.schemas import CancelOutcome, Job, JobError, SubmitRequest, Submitted

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60.0
JobId = Annotated[str, Path(max_length=255, description="a job id POST /v1/jobs answered")]
ERRORS = {
    status: {"model": problems.ProblemDetails, "content": {problems.MEDIA_TYPE: {}}}
    for status in (401, 404, 422, 503)
}
SUBMIT_ERRORS = {
    status: {"model": problems.ProblemDetails, "content": {problems.MEDIA_TYPE: {}}}
    for status in (401, 403, 408, 409, 413, 415, 422, 429, 503)
}
# The body's two forms, for the OpenAPI document (the endpoint reads it itself, by its type).
SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SubmitRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "contentMediaType": "image/*"},
                        }
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=Submitted,
    responses=SUBMIT_ERRORS,  # type: ignore[arg-type]
    openapi_extra=SUBMIT_BODY,
    summary="Submit images",
)
async def submit(
    request: Request,
    tenant: CurrentTenant,
    resources: Res,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description="the same key and body within 24 h answer as the first time and "
            "submit nothing again",
        ),
    ] = None,
) -> JSONResponse:
    """JSON `{"source": ...}` or `{"sources": [...]}` with options; or a multipart upload of
    image files (`file` fields), options then as query parameters. 202 with the job ids and
    a Location: the job's (one source) or the group's; a list without a group has none."""
    submission = await submitting.read(request, resources.settings)
    answer = await run_in_threadpool(
        submitting.answer, resources, tenant, submission, idempotency_key
    )
    headers = {"Location": answer.location} if answer.location else {}
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


@router.get(
    "/{job_id}",
    response_model=Job,
    response_model_exclude_none=True,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="A job's state, and its result or error once it has ended",
)
async def get_job(
    job_id: JobId,
    tenant: CurrentTenant,
    resources: Res,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the job to end first"),
    ] = 0,
) -> Job:
    job = await run_in_threadpool(read_job, resources, tenant, job_id)
    if job.state in FINAL_STATES or wait <= 0:
        return job
    loop = asyncio.get_running_loop()
    end, step = loop.time() + wait, 0.05
    channel = resources.client.config.result_key(job_id)
    async with resources.wakeups.watch(channel) as woken:
        while (left := end - loop.time()) > 0:
            # Woken by the job's result, or re-read now and then (a wake-up can be missed).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(woken.wait(), min(step, left))
            woken.clear()
            step = min(step * 2, 1.0)
            job = await run_in_threadpool(read_job, resources, tenant, job_id)
            if job.state in FINAL_STATES:
                break
    return job


@router.post(
    "/{job_id}/cancel",
    response_model=CancelOutcome,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="Cancel a job that has not started",
)
def cancel(job_id: JobId, tenant: CurrentTenant, resources: Res) -> CancelOutcome:
    """A job not started yet ends REVOKED (error type `Cancelled`) and is never run, whenever
    a worker takes it; one that has started or ended is `too-late` and ends as it would have."""
    read_job(resources, tenant, job_id)  # 404 for an unknown job, or another tenant's
    result = resources.client.cancel([job_id])
    verdict = result.verdicts().get(job_id)
    if verdict not in ("cancelled", "too-late"):
        raise problems.not_found("job", job_id)
    state = result.states.get(job_id, "PENDING")
    return CancelOutcome.model_validate({"id": job_id, "outcome": verdict, "state": state})


def read_job(resources: Resources, tenant: Tenant, job_id: str) -> Job:
    """The job as it stands; 404 (the same for both) when unknown or another tenant's."""
    if not tenant.owns(job_id):
        raise problems.not_found("job", job_id)
    client = resources.client
    outcome = client.status(job_id)
    created = None
    if not outcome.done:
        # Queued jobs have no result yet: the tenant's unfinished jobs tell them from unknown
        # ids. Each is scored by when it stops counting: JOB_COUNT_TTL_S after its submit.
        score = client.redis.zscore(jobs_key(client.config, tenant.name), job_id)
        if score is None and outcome.state == "PENDING":
            raise problems.not_found("job", job_id)
        created = None if score is None else round(float(score) - JOB_COUNT_TTL_S, 3)
    error = None
    if outcome.error_type is not None:
        error = JobError(type=outcome.error_type, message=outcome.error_message or "")
    finished = outcome.meta.get("date_done") if outcome.done else None
    return Job.model_validate(
        {
            "id": job_id,
            "state": outcome.state,
            "tenant": tenant.name,
            "created": created,
            "finished": finished,
            "result": outcome.result if outcome.ok else None,
            "error": error,
        }
    )
