"""What a webhook receives: a job's result as `imgqueue result` prints it, or a group's summary,
read from the result store at the first attempt (and kept, byte for byte, for every retry)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from core.errors import UnknownGroup
from core.keys import result_key
from core.states import SUCCESS, failure_of
from producer import groups
from services.webhooks.deliveries import Delivery

UNREAD: Any = object()  # a job's result not read ahead: `body` reads it itself


def body(store: Any, prefix: str, delivery: Delivery, raw: Any = UNREAD) -> str:
    """The body, from the result store (the job's result, or the group's summary); `raw`:
    the job's result as read ahead."""
    if delivery.kind == "group":
        data = group_payload(delivery, group_summary(store, prefix, delivery.id))
    else:
        if raw is UNREAD:
            raw = store.get(result_key(delivery.id, prefix))
        data = job_payload(delivery, raw)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def job_payload(delivery: Delivery, raw: bytes | str | None) -> dict[str, Any]:
    """What a job's webhook receives: `imgqueue result`'s object (id, state, result or error)
    plus type, queue, group and time. An expired result leaves the event's state and error."""
    out: dict[str, Any] = {
        "type": "job",
        "id": delivery.id,
        "state": delivery.state,
        "queue": delivery.queue or None,
        "group": delivery.group or None,
        "time": _number(delivery.time),
    }
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:  # not a result this service wrote
        meta = None
    if not isinstance(meta, dict):
        if delivery.error:
            out["error"] = {"type": delivery.error, "message": ""}
        return out
    state = str(meta.get("status") or delivery.state)
    out["state"] = state
    if state == SUCCESS:
        out["result"] = meta.get("result")
        return out
    error_type, message = failure_of(meta, state) or (delivery.error or state, "")
    out["error"] = {"type": error_type, "message": message}
    return out


def group_payload(delivery: Delivery, summary: dict[str, Any] | None) -> dict[str, Any]:
    """What a group's webhook receives: the group's id, queue and counters from its event
    (total, succeeded, failed, cancelled), and the group's summary where one is read."""
    out: dict[str, Any] = {
        "type": "group",
        "id": delivery.id,
        "state": delivery.state or "DONE",
        "queue": delivery.queue or None,
        "time": _number(delivery.time),
    }
    for key, value in delivery.extra:
        number = _number(value)
        out[key] = int(number) if number is not None and number.is_integer() else value
    if summary:
        out.update({k: v for k, v in summary.items() if k not in ("type", "id", "webhook")})
    return out


def group_summary(store: Any, prefix: str, group_id: str) -> dict[str, Any] | None:
    """The group's status (producer.groups: counts, progress, timings), or None once it
    expired (the event's counters then)."""
    try:
        found = groups.status(store, group_id, prefix, _none_running)
    except UnknownGroup:
        return None
    return found.to_dict()


def _none_running(ids: Sequence[str]) -> list[str]:
    # Asked only of unfinished jobs, and a group's event comes once none is left.
    return ["PENDING"] * len(ids)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
