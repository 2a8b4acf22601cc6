"""A webhook delivery as the retry set holds it, what one attempt at it got, and what becomes
of it: delivered, tried again later (`retry_delay`), or given up on (`dead_letter`)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from core.lifecycle import EVENT_FIELDS
from core.redaction import display_url
from core.text import text

MAX_RETRY_DELAY = 3600.0  # seconds; the doubling stops here
JITTER = 0.1  # each retry delay is stretched by up to this fraction, so retries spread out

# The event's fields a delivery holds on its own; the rest (a group's counters) are `extra`.
_NOT_EXTRA = frozenset({*EVENT_FIELDS, "tenant"})


@dataclass(frozen=True)
class Delivery:
    """One webhook to deliver: a member of the retry set, as compact JSON."""

    kind: str  # "job" or "group"
    id: str  # the task id or the group id
    url: str
    state: str = ""
    error: str = ""
    queue: str = ""
    group: str = ""
    time: str = ""  # when the state was stored (the event's), epoch seconds
    tenant: str = ""  # signed with this tenant's webhook secret (core.tenants), if any
    attempts: int = 0  # made so far
    first_at: float = 0.0  # when the first attempt started
    body: str | None = None  # fixed at the first attempt, so every retry signs the same bytes
    status: int | None = None  # the last answer's HTTP status
    last_error: str = ""
    # The event's other fields: a group's counters (total, succeeded, failed, cancelled).
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def webhook_id(self) -> str:
        """Stable for the delivery: a receiver seeing it twice has it already."""
        return f"{self.kind}_{self.id}"

    @classmethod
    def from_event(cls, fields: dict[Any, Any] | None) -> Delivery | None:
        """The delivery an event entry asks for, or None (no webhook, or not an event)."""
        got = {text(k): text(v) for k, v in (fields or {}).items()}
        if not got.get("webhook") or not got.get("id"):
            return None
        return cls(
            kind=got.get("kind") or "job",
            id=got["id"],
            url=got["webhook"],
            state=got.get("state", ""),
            error=got.get("error", ""),
            queue=got.get("queue", ""),
            group=got.get("group", ""),
            time=got.get("time", ""),
            tenant=got.get("tenant", ""),
            extra=tuple(sorted((k, v) for k, v in got.items() if k not in _NOT_EXTRA)),
        )

    def member(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_member(cls, raw: bytes | str) -> Delivery:
        data = json.loads(raw)
        data["extra"] = tuple(tuple(pair) for pair in data.get("extra") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status: int | None = None
    error: str = ""
    refused: bool = False  # by the URL check or the SSRF policy: never tried again


@dataclass(frozen=True)
class Outcome:
    """What became of a leased delivery, for the loop to write (`Dispatcher.flush`): `new`
    replaces `member` in the retry set, due at `due` ("" removes it); `dead` is its dead
    letter (JSON), recorded first."""

    member: bytes | str
    new: bytes | str = ""
    due: float = 0.0
    dead: str = ""


def retry_delay(failed: int, backoff: float, jitter: float = JITTER) -> float:
    """Seconds to wait after the `failed`-th failed attempt (1, 2, ...): WEBHOOK_RETRY_BACKOFF
    doubling, at most MAX_RETRY_DELAY, stretched by up to `jitter`."""
    base = min(backoff * 2.0 ** min(failed - 1, 30), MAX_RETRY_DELAY)
    return base * (1 + random.uniform(0, jitter))


def dead_letter(delivery: Delivery, reason: str) -> str:
    """A delivery given up on, as its dead letter (JSON): the loop records it (newest first,
    capped) with one log line. `reason`: attempts, refused or tenant."""
    entry = {
        "webhook_id": delivery.webhook_id,
        "kind": delivery.kind,
        "id": delivery.id,
        "url": display_url(delivery.url),
        "reason": reason,
        "status": delivery.status,
        "error": delivery.last_error,
        "attempts": delivery.attempts,
        "state": delivery.state,
        "first_at": delivery.first_at or None,
        "at": time.time(),
    }
    if delivery.tenant:
        entry["tenant"] = delivery.tenant
    return json.dumps(entry, sort_keys=True)
