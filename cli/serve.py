"""`imgqueue serve [--host H] [--port P]`: run the HTTP gateway (services/gateway/) with uvicorn.

It needs the gateway extra (fastapi, uvicorn), imported only when the command runs: a
producer-only install says so and exits 2. The gateway reads the same Redis settings as every
command (`--redis-url`, `--key-prefix`, ... or their environment variables) and its own
(services/gateway/settings.py: GATEWAY_HOST, GATEWAY_PORT, CORS_ORIGINS, MAX_JSON_BYTES, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from cli.exits import ExitStatus

# The gateway extra's modules (pyproject.toml); another missing module is a bug to show.
EXTRA_MODULES = frozenset({"fastapi", "uvicorn", "starlette", "pydantic", "multipart"})
NEEDS_EXTRA = "this command needs the gateway extra: pip install '.[gateway]'"
# Seconds a stopping gateway lets open requests finish (SIGTERM), then closes them.
SHUTDOWN_GRACE_S = 10


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port within 1..65535, got {text!r}")
    return port


def add_subparser(sub: Any) -> None:
    s = sub.add_parser(
        "serve",
        help="run the HTTP gateway (needs the gateway extra)",
        description="Serve the HTTP API (docs/http.md) until interrupted: submit images, read "
        "results, per-tenant API keys (`imgqueue keys create`). OpenAPI at /openapi.json, "
        "docs at /docs, Prometheus metrics at /metrics.",
    )
    s.add_argument(
        "--host", default=None, help="address to listen on ($GATEWAY_HOST, else 127.0.0.1)"
    )
    s.add_argument("--port", type=_port, default=None, help="TCP port ($GATEWAY_PORT, else 8080)")
    s.set_defaults(offline=run)


def run(ns: argparse.Namespace) -> int:
    try:
        import uvicorn

        from services.gateway.app import create_app
        from services.gateway.settings import GatewaySettings
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        print(f"error: {NEEDS_EXTRA} (missing {exc.name})", file=sys.stderr)
        return ExitStatus.USAGE
    from core.connections import RedisConfig, RedisConfigError, ResultStoreConfig
    from core.settings import SettingError, load

    try:
        settings = dataclasses.replace(
            load(GatewaySettings),
            redis_url=ns.redis_url,
            sentinel_master=ns.sentinel_master,
            key_prefix=ns.key_prefix,
            result_url=ns.result_url,
            result_sentinel_master=ns.result_sentinel_master,
        )
        # A malformed Redis setting stops here, before uvicorn starts, not at the first request.
        broker = RedisConfig.from_env(
            url=ns.redis_url, sentinel_master=ns.sentinel_master, key_prefix=ns.key_prefix
        )
        ResultStoreConfig.from_env(
            url=ns.result_url, sentinel_master=ns.result_sentinel_master, broker=broker
        )
    except (SettingError, RedisConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    uvicorn.run(
        create_app(settings),
        host=ns.host or settings.gateway_host,
        port=ns.port or settings.gateway_port,
        server_header=False,
        # Forwarded headers only from a proxy on this host; uvicorn's default.
        forwarded_allow_ips="127.0.0.1",
        # An event stream (GET /v1/events) never ends by itself: without a limit, SIGTERM
        # would wait for its client. Past it the rest is cut; clients resume with Last-Event-ID.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    return 0
