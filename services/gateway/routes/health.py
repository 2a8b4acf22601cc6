"""/healthz: the process answers (a liveness probe). /readyz: and Redis answers (readiness)."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from redis.exceptions import RedisClusterException

from core.errors import ProducerError
from services.gateway import problems
from services.gateway.resources import Res

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The gateway process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis answers: the gateway can take requests",
    responses={503: {"model": problems.ProblemDetails, "content": {problems.MEDIA_TYPE: {}}}},
)
def readyz(resources: Res) -> dict[str, str]:
    client = resources.client
    try:
        client.redis.ping()
        if client.results is not client.redis:
            client.results.ping()
    except (redis.RedisError, RedisClusterException, ProducerError, OSError) as exc:
        problem = problems.from_error(exc)
        if problem is None:  # a refusal (a Redis user without PING): the operator's to fix
            problems.log.warning("readiness: Redis refused: %s", exc)
            problem = problems.Problem(503, "Redis refused the readiness check; see the log")
        raise problem from None
    return {"status": "ready"}
