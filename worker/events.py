"""Completion events and group counters: what a final state adds to the result store.

Every terminal state (SUCCESS, FAILURE, REVOKED) a job reaches is appended to one Redis Stream
(core.keys.EVENTS_STREAM, `XADD MAXLEN ~ EVENTS_MAXLEN`), and a job of a group is counted
in its group's hash (core.keys.group_keys). The backend (worker/backend.py) stores results
through one Lua script (worker/store_script.py: STORE, which writes them, and its arguments);
this module says what each job's event carries (its Note: queue, group, webhook, tenant, read
from the message), so every final state, whichever path stores it (a task's return, a bulk
message's images, Celery's own `mark_as_revoked`, a cancel or a deadline), is announced alike.

On one Redis it is all one script call, in the result's round trip: the event and the
counters are written atomically with the result, or not at all. On a Redis Cluster the
result, the group and the stream live on different slots, so the backend makes two more calls
after the result is stored: the group's script on its master (ACCOUNT), then the events
(worker/results_cluster.py).

A job is announced once per final state it reaches: a state stored again (a redelivered copy
finishing again, a duplicate message) adds no event. A job of a group counts once: the group's
`done` hash maps each job to the state it was counted with, so a second run counts nothing, and
a FAILURE later replaced by a SUCCESS moves the job from `failed` to `succeeded`. When the last
job of a group ends, exactly one `kind=group` event follows (`HSETNX completed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.contract import BULK_TASK_NAME, TASK_NAME
from core.keys import EVENTS_STREAM, group_keys
from core.lifecycle import GROUP_HEADER, TENANT_HEADER, UPLOAD_SOURCE_PREFIX, WEBHOOK_HEADER
from core.states import FINAL_STATES
from core.tenants import TENANT_NAME

log = logging.getLogger(__name__)

# What a message may carry: longer, or not a string, and it is ignored (no group, no webhook).
MAX_GROUP_CHARS = 255
MAX_WEBHOOK_CHARS = 8192


@dataclass(frozen=True)
class Note:
    """What an event tells of a job besides its state: the job's id, its error type, the queue
    it came from, its group, where to POST it and its tenant (empty: none); and `upload`: its
    source is an upload, whose bytes go when the job ends."""

    task_id: str
    error: str = ""
    queue: str = ""
    group: str = ""
    webhook: str = ""
    tenant: str = ""
    upload: bool = False


@dataclass(frozen=True)
class Origin:
    """Where a message came from, for the jobs it carries (`upload`: a single job's source is
    an upload)."""

    queue: str = ""
    group: str = ""
    webhook: str = ""
    tenant: str = ""
    upload: bool = False


def _text(value: Any, limit: int) -> str:
    if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable():
        return value
    return ""


def tenant_name(value: Any) -> str:
    """A tenant's name as sent, or "" for anything else: it becomes part of a key's name
    (core.tenants.jobs_key)."""
    return value if isinstance(value, str) and TENANT_NAME.match(value) else ""


def is_upload(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(UPLOAD_SOURCE_PREFIX)


def origin(request: Any) -> Origin:
    """The queue (`delivery_info.routing_key`), group, webhook and tenant (message headers) of
    a Celery request (the task's, or the Context Celery passes to `mark_as_revoked`)."""
    if request is None:
        return Origin()
    info = getattr(request, "delivery_info", None) or {}
    headers = getattr(request, "headers", None) or {}
    group = getattr(request, GROUP_HEADER, None) or headers.get(GROUP_HEADER)
    webhook = getattr(request, WEBHOOK_HEADER, None) or headers.get(WEBHOOK_HEADER)
    tenant = getattr(request, TENANT_HEADER, None) or headers.get(TENANT_HEADER)
    args: Any = getattr(request, "args", None) or ()
    single = getattr(request, "task", None) == TASK_NAME and isinstance(args, list | tuple)
    return Origin(
        queue=_text(info.get("routing_key"), 1024),
        group=_text(group, MAX_GROUP_CHARS),
        webhook=_text(webhook, MAX_WEBHOOK_CHARS),
        tenant=tenant_name(tenant),
        upload=single and len(args) > 0 and is_upload(args[0]),
    )


def image_origins(request: Any) -> dict[str, Origin]:
    """Per image of a bulk message (`classify_many`): its entry's `group`, `webhook` and
    `tenant`, else the message's headers; and whether its source is an upload. Empty for any
    other request."""
    if request is None or getattr(request, "task", None) != BULK_TASK_NAME:
        return {}
    base = origin(request)
    args: Any = getattr(request, "args", None) or ()
    items = args[0] if len(args) == 1 and isinstance(args[0], list) else []
    out: dict[str, Origin] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        upload = is_upload(item.get("source"))
        if not upload and not any(k in item for k in ENTRY_KEYS):
            out[item["id"]] = base
            continue
        out[item["id"]] = Origin(
            base.queue,
            _text(item.get("group"), MAX_GROUP_CHARS) or base.group,
            _text(item.get("webhook"), MAX_WEBHOOK_CHARS) or base.webhook,
            tenant_name(item.get("tenant")) or base.tenant,
            upload,
        )
    return out


# A bulk message's image entry may carry its own group, webhook and tenant (core.lifecycle).
ENTRY_KEYS = ("group", "webhook", "tenant")


def entry_origin(item: dict[str, Any]) -> tuple[str, str, str]:
    """An image entry's group, webhook and tenant ("" where absent); InvalidArguments when one
    is not a printable string within its length (a tenant: not a tenant's name)."""
    from worker.errors import InvalidArguments

    out = []
    for name, limit in zip(ENTRY_KEYS[:2], (MAX_GROUP_CHARS, MAX_WEBHOOK_CHARS), strict=True):
        value = item.get(name)
        if value is None or value == "":
            out.append("")
        elif _text(value, limit):
            out.append(value)
        else:
            raise InvalidArguments(f"{name} must be a string of 1..{limit} printable characters")
    tenant = item.get("tenant")
    if tenant not in (None, "") and not tenant_name(tenant):
        raise InvalidArguments("tenant must be a tenant's name (core/tenants.py)")
    return out[0], out[1], tenant or ""


def entry_fields(group: str, webhook: str, tenant: str = "") -> dict[str, str]:
    """The entry fields that carry an image's group, webhook and tenant on (a retry's
    message)."""
    fields = {"group": group, "webhook": webhook, "tenant": tenant}
    return {k: v for k, v in fields.items() if v}


def headers(found: Origin | None) -> dict[str, str]:
    """The message headers that carry an origin's group, webhook and tenant on (a bulk
    message's image sent again as its own `classify` message)."""
    out: dict[str, str] = {}
    if found is not None and found.group:
        out[GROUP_HEADER] = found.group
    if found is not None and found.webhook:
        out[WEBHOOK_HEADER] = found.webhook
    if found is not None and found.tenant:
        out[TENANT_HEADER] = found.tenant
    return out


def current_request() -> Any:
    """The request of the task this thread runs, if any (so a bulk store that was not handed
    its request still finds its images' groups)."""
    from celery._state import get_current_task

    task = get_current_task()
    return None if task is None else task.request


def error_type(encoded: Any) -> str:
    """The error type of an encoded result (`exc_type`), else ""."""
    if isinstance(encoded, dict):
        return _text(encoded.get("exc_type"), 255)
    return ""


def note(task_id: str, encoded: Any, state: str, request: Any) -> Note | None:
    """The Note of one job's final state stored with its own request; None where no event is
    due: a state that is not final, or a bulk message's own summary (its images have theirs)."""
    if state not in FINAL_STATES:
        return None
    if request is not None and getattr(request, "task", None) == BULK_TASK_NAME:
        if getattr(request, "id", None) == task_id:
            return None
        found = image_origins(request).get(task_id) or origin(request)
    else:
        found = origin(request)
    return _note(task_id, encoded, found)


def notes(entries: Sequence[tuple[str, Any, str]], request: Any = None) -> list[Note | None]:
    """Notes for many `(task id, encoded result, state)` stored together (a bulk message's
    images), their origins from `request` (default: the task this thread runs)."""
    if request is None:
        request = current_request()
    base = origin(request)
    images = image_origins(request)
    out: list[Note | None] = []
    for task_id, encoded, state in entries:
        if state not in FINAL_STATES:
            out.append(None)
            continue
        out.append(_note(task_id, encoded, images.get(task_id, base)))
    return out


def _note(task_id: str, encoded: Any, found: Origin) -> Note:
    return Note(
        task_id,
        error_type(encoded),
        found.queue,
        found.group,
        found.webhook,
        found.tenant,
        found.upload,
    )


class Events:
    """The result store's events stream and group keys (after REDIS_KEY_PREFIX), and the
    stream's MAXLEN (0: events off)."""

    def __init__(self, key_prefix: str, maxlen: int) -> None:
        self.key_prefix = key_prefix
        self.maxlen = max(0, int(maxlen))
        self.stream = key_prefix + EVENTS_STREAM

    def group_keys(self, group_id: str) -> list[str]:
        """A group's hash, its `done` hash and its ids list (one hash tag: one slot)."""
        return list(group_keys(group_id, self.key_prefix))


def timestamp() -> str:
    return f"{time.time():.3f}"


def fields(kind: str, note: Note, state: str, now: str) -> dict[str, str]:
    """An event entry's fields (core.lifecycle.EVENT_FIELDS), for a cluster's XADD."""
    return {
        "kind": kind,
        "id": note.task_id,
        "state": state,
        "error": note.error,
        "queue": note.queue,
        "group": note.group,
        "webhook": note.webhook,
        "time": now,
        "tenant": note.tenant,
    }


def maxlen_of(app: Any) -> int:
    """EVENTS_MAXLEN of a worker's app (its Settings); else (a backend built by a plain Celery
    app: tests, benchmarks) the environment's, parsed and checked by the setting's own
    declaration (core.settings.RetentionSettings; SettingError names a bad value)."""
    settings = getattr(app, "settings", None)
    if settings is not None and hasattr(settings, "events_maxlen"):
        return int(settings.events_maxlen)
    from core.settings import RetentionSettings, load

    return int(load(RetentionSettings).events_maxlen)
