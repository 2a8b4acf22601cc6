"""GET /v1/queues/{name}: how many messages wait in a queue the caller may submit to.

The depth is the queue's ten priority lists together (producer.queues.depth, one round trip),
the same number admission control compares with the queue's limit (producer.limits): a page
or a client shows it while its jobs wait. A tenant limited to some queues sees only those.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from producer.limits import get_limit
from producer.queues import depth
from services.gateway import problems
from services.gateway.auth import CurrentTenant
from services.gateway.resources import Res

router = APIRouter(prefix="/v1/queues", tags=["queues"])

QueueName = Annotated[
    str,
    Path(
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:@-]+$",
        description="a queue's name (`celery` is the default queue)",
    ),
]
ERRORS = {
    status: {"model": problems.ProblemDetails, "content": {problems.MEDIA_TYPE: {}}}
    for status in (401, 403, 422, 503)
}


class Queue(BaseModel):
    name: str
    depth: int = Field(description="messages waiting, every priority (not those running)")
    limit: int | None = Field(
        description="the most that may wait (`imgqueue limits set`); a submit past it gets 429"
    )


@router.get(
    "/{name}",
    response_model=Queue,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="A queue's depth: messages waiting in it",
)
def get_queue(name: QueueName, tenant: CurrentTenant, resources: Res) -> Queue:
    if not tenant.may_use_queue(name):
        raise problems.Problem(403, f"this API key may not use queue {name!r}", type="Forbidden")
    client = resources.client
    return Queue(
        name=name,
        depth=depth(client.redis, client.config, name),
        limit=get_limit(client.redis, client.config, name),
    )
