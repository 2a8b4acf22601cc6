"""What a job's final state frees on the broker's Redis: its place in its tenant's quota and
its upload's bytes.

A job submitted with a tenant (core/tenants.py) counts in `imgqueue:tenant-jobs:<tenant>`
until it ends; a job whose source is `upload:<id>` has its bytes at `imgqueue:upload:<id>`
(core/lifecycle.py). Once its SUCCESS, FAILURE or REVOKED is stored (worker/backend.py, the one
path every final state takes), one pipeline removes both for every job of the call.

Best effort: a failure here is logged, never the job's. What is left behind expires anyway (a
tenant's job after core.tenants.JOB_COUNT_TTL_S, an upload after its TTL).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from core.connections import RedisConfig
from core.keys import upload_key
from core.states import FINAL_STATES
from core.tenants import jobs_key
from worker.events import Note

log = logging.getLogger(__name__)

_lock = threading.Lock()
# One broker client per process and Redis: Celery makes a backend per thread.
_clients: dict[tuple[int, RedisConfig], Any] = {}


def broker_config(app: Any) -> RedisConfig:
    """The broker's Redis of a worker's app (its Settings), else of a plain Celery app."""
    settings = getattr(app, "settings", None)
    if settings is not None and hasattr(settings, "redis_config"):
        config: RedisConfig = settings.redis_config
        return config
    options = app.conf.get("broker_transport_options") or {}
    url = str(app.conf.broker_url or "").split(";", 1)[0]
    return RedisConfig(
        url or RedisConfig().url,
        str(options.get("master_name") or ""),
        str(options.get("global_keyprefix") or ""),
    )


def _client(config: RedisConfig) -> Any:
    key = (os.getpid(), config)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = config.client()
        return client


def due(notes: Sequence[Note | None], states: Sequence[str]) -> list[Note]:
    """The notes of final states that free something."""
    return [
        n
        for n, state in zip(notes, states, strict=True)
        if n is not None and state in FINAL_STATES and (n.tenant or n.upload)
    ]


def release(app: Any, notes: Sequence[Note]) -> None:
    """ZREM the jobs from their tenants' sets and DEL their uploads: one round trip."""
    if not notes:
        return
    try:
        config = broker_config(app)
        by_tenant: dict[str, list[str]] = {}
        uploads: list[str] = []
        for note in notes:
            if note.tenant:
                by_tenant.setdefault(note.tenant, []).append(note.task_id)
            if note.upload:
                uploads.append(config.key_prefix + upload_key(note.task_id))
        pipe = _client(config).pipeline(transaction=False)
        for tenant, ids in by_tenant.items():
            pipe.zrem(jobs_key(config, tenant), *ids)
        if uploads:
            pipe.delete(*uploads)
        pipe.execute()
    except Exception as exc:  # whatever went wrong here, the jobs' results are stored
        log.warning(
            "cannot release %d ended job(s) from their tenants' quotas or uploads: %s: %s",
            len(notes),
            type(exc).__name__,
            exc,
        )
