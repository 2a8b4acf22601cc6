"""What a gateway process makes once, at start (the lifespan hook), and requests share.

No state of its own beyond caches: several gateways behind a load balancer share only Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from core.tenants import Keyring
from producer.client import Client
from services.gateway.settings import GatewaySettings
from services.gateway.wakeups import Wakeups


@dataclass(frozen=True)
class Resources:
    settings: GatewaySettings
    client: Client  # thread-safe: redis-py's and kombu's connection pools
    keyring: Keyring
    wakeups: Wakeups


def lifespan(settings: GatewaySettings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        client = Client.from_settings(
            settings,
            upload_max_bytes=settings.upload_max_bytes,
            upload_ttl_s=settings.upload_ttl_s,
            upload_url=settings.upload_url or None,
        )
        wakeups = Wakeups(client.result_config)
        keyring = Keyring(client.redis, client.config)
        app.state.resources = Resources(settings, client, keyring, wakeups)
        try:
            yield
        finally:
            await wakeups.close()
            client.close()

    return run


async def get_resources(request: Request) -> Resources:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request.
    resources: Resources = request.app.state.resources
    return resources


Res = Annotated[Resources, Depends(get_resources)]
