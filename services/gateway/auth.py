"""`Authorization: Bearer KEY` -> the key's tenant (core.tenants.Keyring), or 401.

A key is never logged nor echoed: uvicorn's access log shows no headers, and no answer here
repeats what was sent. The Keyring caches each key's tenant for KEY_TTL_S seconds, so a revoked
key stops working within that.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.tenants import Tenant
from services.gateway.problems import Problem
from services.gateway.resources import Res

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key from `imgqueue keys create --tenant NAME`, sent as "
    "`Authorization: Bearer iq_...`.",
)


async def authenticate(
    resources: Res,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Tenant:
    if credentials is None:
        raise Problem(
            401,
            "send an API key: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="imgqueue"'},
        )
    # On the event loop while the key is cached (most requests); a thread only to ask Redis.
    known, tenant = resources.keyring.cached(credentials.credentials)
    if not known:
        tenant = await run_in_threadpool(resources.keyring.authenticate, credentials.credentials)
    if tenant is None:
        raise Problem(
            401,
            "the API key is unknown or revoked",
            headers={"WWW-Authenticate": 'Bearer realm="imgqueue", error="invalid_token"'},
        )
    return tenant


CurrentTenant = Annotated[Tenant, Depends(authenticate)]
