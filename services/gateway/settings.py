"""The gateway's settings: one frozen dataclass, read once at start from the environment.

Declared with `core.settings.env` like every other setting, so docs/settings.md lists them
(scripts/settings_doc.py). The Redis connection is the producer's own (REDIS_URL,
REDIS_SENTINEL_MASTER, REDIS_KEY_PREFIX, RESULT_URL, RESULT_SENTINEL_MASTER, read by
core.connections); `imgqueue serve --redis-url ...` overrides them through the plain fields
at the end. Importing this needs nothing beyond the standard library and `producer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.objects import is_object_url
from core.settings import SettingError, UploadSettings, env, names

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class GatewaySettings(UploadSettings):
    """The HTTP gateway (`imgqueue serve`), besides the uploads' UploadSettings.

    UPLOAD_MAX_BYTES and UPLOAD_TTL_S are core.settings.UploadSettings' (a producer reads
    them too)."""

    gateway_host: str = env(
        DEFAULT_HOST, str, "address `imgqueue serve` listens on (`--host` wins over it)"
    )
    gateway_port: int = env(
        DEFAULT_PORT, int, "TCP port `imgqueue serve` listens on (`--port` wins over it)"
    )
    cors_origins: tuple[str, ...] = env(
        (),
        names,
        "origins (comma separated, e.g. `https://app.example.com`) whose pages may call the"
        " API from a browser; empty: CORS off, no Access-Control-* header is ever sent",
    )
    max_json_bytes: int = env(
        1024 * 1024,
        int,
        "largest JSON request body, in bytes; a larger one is refused with 413 before it is"
        " parsed (which also bounds how deeply it can nest)",
        shown="`1048576` (1 MiB)",
    )
    body_timeout_s: float = env(
        30.0,
        float,
        "seconds a client has to send a whole request body; a slower one (trickling) gets 408"
        " and its connection is closed",
    )
    upload_url: str = env(
        "",
        str,
        "`s3://bucket/prefix` (or `gs://`, `az://`): uploaded images are PUT to"
        " `<prefix>/<task id>` there, and that URL is the job's source, instead of Redis;"
        " workers read it with their own credentials, and nothing deletes it (docs/objects.md)",
        shown="unset (Redis)",
    )
    sse_keepalive_s: float = env(
        15.0,
        float,
        "seconds between keep-alive comments on an idle `GET /v1/events` stream, so proxies and"
        " load balancers do not close it",
    )
    # Set by `imgqueue serve`'s global options; None: the producer's environment variables.
    redis_url: str | None = None
    sentinel_master: str | None = None
    key_prefix: str | None = None
    result_url: str | None = None
    result_sentinel_master: str | None = None

    def validate(self) -> None:
        super().validate()
        if not 0 < self.gateway_port < 65536:
            raise SettingError("GATEWAY_PORT must be within 1..65535")
        if self.max_json_bytes < 1024:
            raise SettingError("MAX_JSON_BYTES must be 1024 or more")
        if not 0 < self.body_timeout_s <= 3600:
            raise SettingError("BODY_TIMEOUT_S must be within 0..3600 seconds (above 0)")
        if self.upload_url and not is_object_url(self.upload_url):
            raise SettingError(
                f"UPLOAD_URL must be an s3://, gs:// or az:// URL, got {self.upload_url!r}"
            )
        if not 0 < self.sse_keepalive_s <= 300:
            raise SettingError("SSE_KEEPALIVE_S must be within 0..300 seconds (above 0)")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise SettingError(f"CORS_ORIGINS: {origin!r} is not an http(s) origin nor *")
