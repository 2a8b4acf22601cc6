"""The events a Redis Cluster store has yet to append: at least once, even past a killed worker.

On one Redis a final state and its completion event are written by one script
(worker/events.py). On a Redis Cluster the results are spread over the masters and the stream
is one key on one of them, so the backend (worker/results_cluster.py) writes them in calls of
their own; a worker killed between its results' call and its events' call would lose the
events, and with them the webhooks. The outbox, a hash in the stream's own hash slot
(core.keys.outbox_key), closes that gap:

1. Before it stores final states, the worker records an *intent* per job, and per group the
   call counts: HSETNX `job:<id>` / `group:<id>` -> `<token>|{"at": ..., "fields": [...]}`
   (`token`: this store call's own).
2. It stores the results (WAIT for a replica) and counts the groups, as before.
3. One script on the stream's master (ANNOUNCE) appends the events due and deletes the call's
   intents: an event is appended in the same step as its intent goes.

An intent left behind names a store that did not finish: a worker killed, or a call that
failed part way and is retried. Whichever meets it next settles it, once:

- the store's retry, or the job's next run when its message comes back: ANNOUNCE finds an
  intent that is not its own, deletes it and appends the job's event even when the state it
  stored was not new (so the retry of a half-done call appends what the first call did not);
- else a webhook dispatcher (`Sweeper`, every few seconds): an intent older than
  EVENTS_SWEEP_AFTER whose job's result is final is appended with that state, and a group's
  when the group has completed, by one script (SWEEP) that first checks the intent is still
  the one it read, so a sweep and a late worker never both append it. An intent whose job is
  still unfinished a day later is dropped (its job never ended).

An event may so come twice (a worker slower than EVENTS_SWEEP_AFTER, a group whose intent is
swept after another worker announced it), never not at all: at least once, as webhooks are.

This module is what both sides share: an intent's form and an event's fields as the scripts
take them. The worker's side (INTEND, ANNOUNCE) is worker/outbox.py; the sweep (SWEEP,
`Sweeper`) is the webhook dispatcher's, services/webhooks/sweeper.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.text import text

# A group's fields its event carries, as ACCOUNT's summary reads them (worker/events.py).
SUMMARY = ("queue", "webhook", "total", "succeeded", "failed", "cancelled", "tenant")


def flat(fields: dict[str, str]) -> str:
    """An event's fields as ANNOUNCE and SWEEP take them: a JSON array, in order (the stream
    stores entries with the same fields in the same order compactly)."""
    return json.dumps([x for pair in fields.items() for x in pair], separators=(",", ":"))


def intent(token: str, at: str, fields: dict[str, str] | None = None) -> str:
    """An intent as the outbox holds it: `<token>|{"at": ..., "fields": {...}}` (a group's
    carries no fields: its event is built when it is announced)."""
    body: dict[str, Any] = {"at": at}
    if fields is not None:
        body["fields"] = fields
    return f"{token}|{json.dumps(body, separators=(',', ':'))}"


@dataclass(frozen=True)
class Intent:
    """An intent as read back: its field (`job:<id>`, `group:<id>`), its value as held, when it
    was recorded, and the event's fields it carries."""

    field: str
    value: str
    at: float
    fields: dict[str, str]


def read_intent(field: str, value: str) -> Intent | None:
    """The intent held at `field`, or None where the value is not one `intent` wrote."""
    try:
        body = json.loads(value.split("|", 1)[1])
        return Intent(field, value, float(body["at"]), dict(body.get("fields") or {}))
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def group_fields(group_id: str, summary: Sequence[Any], now: str) -> dict[str, str]:
    """The `kind=group` event of a group whose last job ended, from its SUMMARY fields (or
    ACCOUNT's summary: the same seven), for the sweep and a cluster's worker alike."""
    queue, webhook, total, succeeded, failed, cancelled, tenant = (text(v or "") for v in summary)
    return {
        "kind": "group",
        "id": group_id,
        "state": "DONE",
        "error": "",
        "queue": queue,
        "group": group_id,
        "webhook": webhook,
        "time": now,
        "total": total or "0",
        "succeeded": succeeded or "0",
        "failed": failed or "0",
        "cancelled": cancelled or "0",
        "tenant": tenant,
    }
