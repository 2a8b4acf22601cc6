"""GET /v1/groups/{id} (counts, progress, ETA) and GET /v1/groups/{id}/results (NDJSON).

A group records its tenant when submitted (producer/groups.py): another tenant's group answers
404 exactly as an unknown one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from core.errors import UnknownGroup
from core.tenants import Tenant
from producer import groups
from services.gateway import problems
from services.gateway.auth import CurrentTenant
from services.gateway.resources import Res, Resources
from services.gateway.schemas import Group

router = APIRouter(prefix="/v1/groups", tags=["groups"])

GroupId = Annotated[str, Path(max_length=255, description="the group id POST /v1/jobs answered")]
ERRORS = {
    status: {"model": problems.ProblemDetails, "content": {problems.MEDIA_TYPE: {}}}
    for status in (401, 404, 422, 503)
}
NDJSON = "application/x-ndjson"


@router.get(
    "/{group_id}",
    response_model=Group,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="A group's counts, progress and ETA",
)
def get_group(group_id: GroupId, tenant: CurrentTenant, resources: Res) -> Group:
    try:
        status = resources.client.group(group_id)
    except UnknownGroup:
        raise problems.not_found("group", group_id) from None
    if status.tenant != tenant.name:
        raise problems.not_found("group", group_id)
    return Group.model_validate({**status.to_dict(), "tenant": status.tenant})


@router.get(
    "/{group_id}/results",
    responses={
        200: {
            "description": "one JSON object per line and job, in submit order: its id and "
            "state, and its result or error once it has ended",
            "content": {NDJSON: {}},
        },
        **ERRORS,  # type: ignore[dict-item]
    },
    response_class=StreamingResponse,
    summary="Every job of a group as it stands (NDJSON, streamed)",
)
def group_results(group_id: GroupId, tenant: CurrentTenant, resources: Res) -> StreamingResponse:
    check_owner(resources, tenant, group_id)
    return StreamingResponse(_lines(resources, group_id), media_type=NDJSON)


def check_owner(resources: Resources, tenant: Tenant, group_id: str) -> None:
    client = resources.client
    try:
        meta = groups.read_meta(client.results, group_id, client.result_config.key_prefix)
    except UnknownGroup:
        raise problems.not_found("group", group_id) from None
    if meta.get("tenant", "") != tenant.name:
        raise problems.not_found("group", group_id)


def _lines(resources: Resources, group_id: str) -> Iterator[bytes]:
    """Read a page of ids at a time (in the thread pool, as Starlette runs sync iterators)."""
    for outcome in resources.client.group_results(group_id):
        yield (json.dumps(outcome.to_dict(), sort_keys=True) + "\n").encode()
