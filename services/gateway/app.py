"""The ASGI app: `create_app(settings)`, served by `imgqueue serve` (uvicorn).

    from services.gateway.app import create_app
    app = create_app()        # settings from the environment (services/gateway/settings.py)

Middleware, outermost first: metrics (every request counted, refusals included), CORS (only
when CORS_ORIGINS is set, so errors carry its headers too), the body limits (size and time,
before any parsing). The Redis clients are made once, in the lifespan hook (resources.py).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from core.settings import load
from services.gateway import idempotency, problems
from services.gateway.body_limits import BodyLimits
from services.gateway.metrics import Metrics, MetricsMiddleware
from services.gateway.metrics import router as metrics_router
from services.gateway.resources import lifespan
from services.gateway.routes import events, groups, health, jobs, page, queues
from services.gateway.settings import GatewaySettings

DESCRIPTION = """\
Submit images for classification and read their results over HTTP. Every call but the health
checks takes an API key (`imgqueue keys create --tenant NAME`) as `Authorization: Bearer KEY`;
a tenant sees only its own jobs and groups. Errors are RFC 9457 problem details
(`application/problem+json`) whose `type` is a stable name to branch on. docs/http.md has more.
"""


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or load(GatewaySettings)
    app = FastAPI(
        title="imgqueue",
        summary="Image classification jobs over HTTP",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan(settings),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # operationIds are the endpoints' names (submit, get_job, ...): what a generated
        # client's methods are called.
        generate_unique_id_function=_operation_id,
    )
    metrics = Metrics()
    app.state.metrics = metrics
    problems.install(app)
    for router in (
        jobs.router,
        groups.router,
        health.router,
        metrics_router,
        events.router,
        queues.router,
        page.router,
    ):
        app.include_router(router)
    _add_middleware(app, settings, metrics)
    return app


def _add_middleware(app: FastAPI, settings: GatewaySettings, metrics: Metrics) -> None:
    """The middleware, innermost first: add_middleware wraps what is there, so the last added
    is the outermost (the module doc's order)."""
    app.add_middleware(
        BodyLimits, max_json_bytes=settings.max_json_bytes, timeout_s=settings.body_timeout_s
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", idempotency.HEADER],
            expose_headers=["Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
