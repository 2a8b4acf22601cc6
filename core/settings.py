"""Settings read from the environment: how they are declared (`env`), the one loader (`load`),
and the settings workers, producers and services share (where Redis is, read through
core.connections; the delivery layer's; object stores; images submitted as bytes; and what
workers and the webhook dispatcher both read: what is kept of events and dead letters, logging
and the metrics endpoint, how URLs are reached).

Each setting is one dataclass field declared with `env(default, parse, doc)`: its environment
variable is the field's name upper-cased, `parse` turns the text into its type (raising
ValueError), and a class's `validate()` checks ranges. docs/settings.md is generated from these
declarations (scripts/settings_doc.py). worker/settings.py declares the worker's own on top,
services/webhooks/settings.py the webhook dispatcher's.

Importing this needs nothing beyond the standard library (a producer-only install).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from core.addresses import IPNetwork
from core.contract import DEFAULT_QUEUE, DEFAULT_REDIS_URL
from core.lifecycle import UPLOAD_MAX_BYTES, UPLOAD_TTL_S

T = TypeVar("T")
S = TypeVar("S")


class SettingError(ValueError):
    """A setting present but malformed or out of range; the message names its variable."""


def env(
    default: T,
    parse: Callable[[str], T],
    doc: str = "",
    *,
    shown: str | None = None,
    secret: bool = False,
) -> T:
    """A setting read from the environment variable of its upper-cased name by `parse`.

    `doc` says what it does and `shown` how to show its default, where the value alone would
    mislead (`0` meaning "sized from the machine"); docs/settings.md is generated from both
    (scripts/settings_doc.py). `secret` keeps the value out of the settings' repr.
    """
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not settings")
    made: T = field(
        default=default,
        repr=not secret,
        metadata={"parse": parse, "doc": doc, "shown": shown},
    )
    return made


def names(raw: str) -> tuple[str, ...]:
    """A comma-separated list of names, blanks dropped."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def upper(raw: str) -> str:
    return raw.upper()


def networks(raw: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of CIDRs (`10.0.0.0/8`), blanks dropped."""
    return tuple(ipaddress.ip_network(p.strip()) for p in raw.split(",") if p.strip())


def parsed(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `env` fields of `cls` set in `environ` (default: os.environ), parsed; empty counts
    as unset. SettingError names a malformed one."""
    source = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = source.get(f.name.upper())
        if "parse" not in f.metadata or raw is None or raw.strip() == "":
            continue
        try:
            values[f.name] = f.metadata["parse"](raw.strip())
        except ValueError as exc:
            raise SettingError(f"{f.name.upper()}={raw.strip()!r} is invalid: {exc}") from exc
    return values


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """`cls` built from the environment and validated; raises SettingError."""
    settings = cls(**parsed(cls, environ))
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


@dataclass(frozen=True)
class ConnectionSettings:
    """Where Redis is, for workers, producers and services alike (core.connections reads them).

    Producers may also take them as arguments (`redis_url=`, `--result-url`, ...)."""

    redis_url: str = env(
        DEFAULT_REDIS_URL,
        str,
        "the broker (queues), and the results unless `RESULT_URL`: `redis://`, `rediss://` (TLS),"
        " passwords (`redis://:PASSWORD@host:6379/0`), `unix://`, and"
        " `sentinel://h1:26379;sentinel://h2:26379/0` work",
    )
    redis_sentinel_master: str = env(
        "", str, "the master's name; required with `sentinel://` (producers too)"
    )
    # kombu's global_keyprefix, for broker and results alike
    redis_key_prefix: str = env(
        "",
        str,
        "put before every key (queues, results, the delivery layer's); ends with `:`, `_`, `-`"
        " or `.`; producers need the same",
    )
    result_url: str = env(
        "",
        str,
        "where results (and the result cache, delivery counters, completion events) go,"
        " producers too: any `REDIS_URL` form, or a Redis Cluster"
        " `redis-cluster://[user:pass@]host:port[,host:port...][/0]` (`rediss-cluster://` for"
        " TLS; a few nodes suffice, the rest are found)",
        shown="`REDIS_URL`",
    )
    result_sentinel_master: str = env(
        "",
        str,
        "the master's name for a `sentinel://` `RESULT_URL`",
        shown="`REDIS_SENTINEL_MASTER`",
    )


@dataclass(frozen=True)
class DeliverySettings:
    """The delivery layer's settings, read alike by workers, the exporter and `imgqueue status`."""

    dead_worker_timeout: float = env(
        15.0,
        float,
        "seconds without a heartbeat before a worker process counts as dead; any live worker"
        " then returns its jobs to the head of their queues",
    )

    def validate(self) -> None:
        if not 1 <= self.dead_worker_timeout <= 3600:
            raise SettingError("DEAD_WORKER_TIMEOUT must be within 1..3600 seconds")


@dataclass(frozen=True)
class ReportSettings(DeliverySettings):
    """What `python -m services.exporter` and `imgqueue status` report on."""

    queues: tuple[str, ...] = env(
        (DEFAULT_QUEUE,),
        names,
        "the queues to report, comma separated, even with no worker (those a live worker"
        " consumes and those of registered models are found by themselves)",
    )


def _endpoint(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


@dataclass(frozen=True)
class ObjectStoreSettings:
    """Object stores (`s3://`, `gs://`, `az://`; docs/objects.md), for workers and producers.

    Read alike by workers, producers and the gateway; credentials are each store's own
    environment variables (`AWS_ACCESS_KEY_ID`, ...), not settings of this project."""

    s3_endpoint_url: str = env(
        "",
        _endpoint,
        "an S3-compatible endpoint for `s3://` URLs (MinIO, Ceph, R2, a test server), e.g."
        " `http://minio:9000`; `http://` allows plain HTTP. Unset: AWS (`AWS_ENDPOINT_URL_S3`"
        " or `AWS_ENDPOINT_URL` where set), in `AWS_REGION`",
        shown="AWS",
    )


@dataclass(frozen=True)
class UploadSettings:
    """Images submitted as bytes: read by `producer.Client` and the gateway alike.

    A Client also takes them as `upload_max_bytes=` and `upload_ttl_s=`."""

    upload_max_bytes: int = env(
        UPLOAD_MAX_BYTES,
        int,
        "largest image, in bytes, submitted as bytes (a multipart upload, `Client.submit(bytes)`);"
        " a larger one is refused (`UploadTooLarge`, 413 from the gateway) before it is stored",
        shown=f"`{UPLOAD_MAX_BYTES}` (20 MiB)",
    )
    upload_ttl_s: int = env(
        UPLOAD_TTL_S,
        int,
        "seconds an uploaded image waits in Redis for a worker; its job then fails with"
        " SourceNotFound",
        shown=f"`{UPLOAD_TTL_S}` (24 h)",
    )

    def validate(self) -> None:
        if self.upload_max_bytes < 1:
            raise SettingError("UPLOAD_MAX_BYTES must be 1 or more")
        if self.upload_ttl_s < 1:
            raise SettingError("UPLOAD_TTL_S must be 1 or more seconds")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class RetentionSettings:
    """Completion events and dead letters kept, for workers and the webhook dispatcher alike.

    Both append events (the dispatcher those its outbox sweep finds) and record dead letters
    (the broker's messages, the dispatcher's deliveries)."""

    events_maxlen: int = env(
        100_000,
        int,
        "completion events kept in the stream `imgqueue:events` (`XADD MAXLEN ~`; ~110 bytes"
        " each); `0` turns events off (docs/lifecycle.md)",
    )
    dead_letter_limit: int = env(
        10_000,
        int,
        "dead letters kept (messages, and the webhook dispatcher's deliveries); the oldest are"
        " dropped beyond, with a warning",
    )

    def validate(self) -> None:
        if self.events_maxlen < 0:
            raise SettingError("EVENTS_MAXLEN must not be negative (0 turns events off)")
        if self.dead_letter_limit < 1:
            raise SettingError("DEAD_LETTER_LIMIT must be >= 1")


@dataclass(frozen=True)
class ProcessSettings:
    """Log level and metrics endpoint (core/endpoint.py), for workers and the webhook dispatcher."""

    metrics_port: int = env(
        0,
        int,
        "serves Prometheus `/metrics` and `/healthz` (a worker's `/ready` too; 9808 in the worker"
        " image); one per worker process on a host",
        shown="`0` (off)",
    )
    metrics_addr: str = env("0.0.0.0", str, "interface for the metrics port")
    log_level: str = env(
        "",
        upper,
        "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`; when set it wins over a worker's `-l`"
        " (the webhook dispatcher: `INFO` when unset). Below `DEBUG` a worker logs one"
        " structured `job {...}` line per job and silences Celery's own two per-task lines",
        shown="Celery's `-l`",
    )

    def validate(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise SettingError("METRICS_PORT must be within 0..65535")
        if self.log_level not in ("", *LOG_LEVELS):
            raise SettingError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True)
class UrlPolicySettings:
    """How URLs are reached, for workers (images) and the webhook dispatcher (webhooks) alike.

    Which non-public networks are allowed (core/addresses.py) and how long connecting may take
    (core/vetted_http.py)."""

    fetch_connect_timeout: float = env(
        5.0,
        float,
        "seconds to connect to a URL's host (or an object store; a webhook's: at most"
        " `WEBHOOK_TIMEOUT`)",
    )
    fetch_allow_networks: tuple[IPNetwork, ...] = env(
        (),
        networks,
        "CIDRs a URL may reach despite being non-public, e.g. `10.0.0.0/8` (webhook URLs too)",
    )
