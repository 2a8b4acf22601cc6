"""Following completion events: the Redis Stream every terminal state is appended to.

Workers append one entry per job that reaches SUCCESS, FAILURE or REVOKED, and one `kind=group`
entry when the last job of a group ends (worker/events.py). Any Redis client can follow the
stream with `XREAD` or a consumer group (docs/lifecycle.md); `Client.events()` does it with
`XREAD BLOCK` (`imgqueue events`: cli/events.py). Imports redis only (no Celery, no torch).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from core.connections import block_budget
from core.keys import EVENTS_STREAM
from core.lifecycle import EVENT_FIELDS, GROUP_EVENT_COUNTS
from core.text import text

# The longest a single XREAD blocks (less on a client whose socket timeout is shorter); `follow`
# reads again until its own timeout.
_BLOCK = 5.0


@dataclass(frozen=True)
class Event:
    """One stream entry: `kind` "job" (`id` a task id, `state` SUCCESS, FAILURE or REVOKED)
    or "group" (`id` a group id, `state` DONE, `counts` its final counters). `entry_id` is the
    stream's own id (`<ms>-<seq>`): pass it back as `since` to go on after it."""

    entry_id: str
    kind: str
    id: str
    state: str
    error: str = ""
    queue: str = ""
    group: str = ""
    webhook: str = ""
    time: float = 0.0
    tenant: str = ""  # the tenant that submitted the job or group (core/tenants.py)
    counts: dict[str, int] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, entry_id: Any, raw: dict[Any, Any]) -> Event:
        values = {text(k): text(v) for k, v in raw.items()}
        known = {name: values.get(name, "") for name in EVENT_FIELDS}
        try:
            when = float(known.pop("time") or 0)
        except ValueError:
            when = 0.0
        counts = {
            name: int(values[name]) for name in GROUP_EVENT_COUNTS if values.get(name, "").isdigit()
        }
        return cls(text(entry_id), time=when, counts=counts, **known)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entry_id": self.entry_id,
            "kind": self.kind,
            "id": self.id,
            "state": self.state,
            "error": self.error or None,
            "queue": self.queue,
            "group": self.group or None,
            "time": self.time,
        }
        if self.tenant:
            out["tenant"] = self.tenant
        if self.counts:
            out.update(self.counts)
        return out


def follow(
    client: Any,
    key_prefix: str = "",
    since: str = "$",
    *,
    timeout: float | None = None,
    count: int = 500,
) -> Iterator[Event]:
    """Events after `since` ("$": only those appended from now on, this call's now, not the
    first iteration's; "0": every one the stream still holds; or an `entry_id`), in stream
    order, blocking for new ones. Ends once `timeout` seconds pass without a new event (None:
    follows forever)."""
    stream = key_prefix + EVENTS_STREAM
    # "$" becomes the stream's last id at once: nothing appended between this call and the
    # first read, or between two reads, is missed.
    last = _last_id(client, stream) if since == "$" else since
    return _read(client, stream, last, timeout, count)


def _read(
    client: Any, stream: str, last: str, timeout: float | None, count: int
) -> Iterator[Event]:
    idle_since = time.monotonic()
    most = int(block_budget(client, _BLOCK) * 1000)
    while True:
        block = most
        if timeout is not None:
            left = timeout - (time.monotonic() - idle_since)
            if left <= 0:
                return
            block = max(1, min(block, int(left * 1000)))
        reply = client.xread({stream: last}, count=count, block=block)
        entries = _entries(reply)
        if not entries:
            continue
        idle_since = time.monotonic()
        for entry_id, raw in entries:
            event = Event.parse(entry_id, raw)
            last = event.entry_id
            yield event


def _last_id(client: Any, stream: str) -> str:
    newest = client.xrevrange(stream, count=1)
    return text(newest[0][0]) if newest else "0-0"


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """XREAD's entries for one stream (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for entries in reply.values() for e in (entries[0] if entries else [])]
    return [entry for _, entries in reply for entry in entries]
