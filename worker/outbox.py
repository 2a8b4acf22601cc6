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
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.connections import mget
from core.keys import group_key, result_key
from core.keys import outbox_key as outbox_key
from core.states import FINAL_STATES, state_of
from core.text import text
from worker import events

log = logging.getLogger(__name__)

# A group's fields its event carries, as ACCOUNT's summary reads them (worker/events.py).
SUMMARY = ("queue", "webhook", "total", "succeeded", "failed", "cancelled", "tenant")
GIVE_UP_SECONDS = 86_400.0  # an intent whose job is still unfinished this long is dropped
SWEEP_BATCH = 1000  # stale intents settled per sweep; the rest at the next

# KEYS[1] the outbox; ARGV: field, value pairs. Kept where one is there already: an earlier
# store of the job that did not finish, for ANNOUNCE to find.
INTEND = """
for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS[1] the stream, KEYS[2] the outbox; ARGV[1] the call's token, ARGV[2] MAXLEN, then per
# intent: its field, '1' when its event is due from this call, the event's fields (a JSON
# array of names and values; '' for none). A job's own intent goes, its event appended when
# due; another's (a store that did not finish) goes with the event appended whatever this call
# found. A group's own intent goes; another's only with the group's event (due: it completed).
ANNOUNCE = """
local token, maxlen = ARGV[1] .. '|', tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 3 do
  local field, due, fields = ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2]
  local held = redis.call('HGET', KEYS[2], field)
  local own = held and string.sub(held, 1, #token) == token
  local emit = due
  if own then
    redis.call('HDEL', KEYS[2], field)
  elseif held and string.sub(field, 1, 4) == 'job:' and fields ~= '' then
    redis.call('HDEL', KEYS[2], field)
    emit = true
  elseif held and due then
    redis.call('HDEL', KEYS[2], field)
  end
  if emit and fields ~= '' and maxlen > 0 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(cjson.decode(fields)))
    added = added + 1
  end
end
return added
"""

# KEYS[1] the stream, KEYS[2] the outbox; ARGV: the field, the intent as the sweep read it,
# MAXLEN, the event's fields (JSON array; '' drops the intent without an event).
SWEEP = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[4] ~= '' and tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[3]), '*', unpack(cjson.decode(ARGV[4])))
  return 1
end
return 0
"""


def flat(fields: dict[str, str]) -> str:
    """An event's fields as ANNOUNCE and SWEEP take them: a JSON array, in order (the stream
    stores entries with the same fields in the same order compactly)."""
    return json.dumps([x for pair in fields.items() for x in pair], separators=(",", ":"))


def new_token() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:16]}"


def intent(token: str, at: str, fields: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {"at": at}
    if fields is not None:
        body["fields"] = fields
    return f"{token}|{json.dumps(body, separators=(',', ':'))}"


@dataclass(frozen=True)
class Stale:
    """An intent the sweep found old enough to settle."""

    field: str
    value: str
    at: float
    fields: dict[str, str]


def _parse(field: str, value: str) -> Stale | None:
    try:
        body = json.loads(value.split("|", 1)[1])
        return Stale(field, value, float(body["at"]), dict(body.get("fields") or {}))
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class Sweeper:
    """Settles the intents stores left behind (module doc); a webhook dispatcher runs it."""

    def __init__(self, store: Any, key_prefix: str, maxlen: int, after: float) -> None:
        self.store = store
        self.prefix = key_prefix
        self.events = events.Events(key_prefix, maxlen)
        self.outbox = outbox_key(self.events.stream)
        self.after = after
        self._sweep = store.register_script(SWEEP)

    def sweep(self) -> int:
        """Append the events of stale intents; returns how many were appended."""
        if self.outbox is None:
            return 0
        now = time.time()
        stale: list[Stale] = []
        for raw_field, raw_value in self.store.hscan_iter(self.outbox, count=500):
            found = _parse(text(raw_field), text(raw_value))
            if found is None:  # not an intent this service wrote
                self.store.hdel(self.outbox, raw_field)
            elif now - found.at >= self.after:
                stale.append(found)
            if len(stale) >= SWEEP_BATCH:
                break
        if not stale:
            return 0
        jobs = [s for s in stale if s.field.startswith("job:")]
        added = self._jobs(jobs, now)
        added += self._groups([s for s in stale if s.field.startswith("group:")], now)
        if added:
            log.warning(
                "appended %d completion event(s) a worker stored the result of but never "
                "announced (killed, or its store failed part way)",
                added,
            )
        return added

    def _settle(self, item: Stale, fields: dict[str, str] | None) -> int:
        args = [item.field, item.value, self.events.maxlen, flat(fields) if fields else ""]
        return int(self._sweep(keys=[self.events.stream, self.outbox], args=args))

    def _jobs(self, jobs: Sequence[Stale], now: float) -> int:
        ids = [s.field.split(":", 1)[1] for s in jobs]
        raws = mget(self.store, [result_key(i, self.prefix) for i in ids])
        added = 0
        for item, raw in zip(jobs, raws, strict=True):
            state = state_of(raw)
            if state in FINAL_STATES:
                fields = {**item.fields, "state": state, "time": f"{item.at:.3f}"}
                added += self._settle(item, fields)
            elif now - item.at >= GIVE_UP_SECONDS:
                log.warning("dropped the outbox intent of %s: never finished", item.field)
                self._settle(item, None)
        return added

    def _groups(self, groups: Sequence[Stale], now: float) -> int:
        added = 0
        for item in groups:
            gid = item.field.split(":", 1)[1]
            found = self.store.hmget(self.prefix + group_key(gid), ["completed", *SUMMARY])
            if found[0] is None:  # not completed: whoever ends its last job announces it
                self._settle(item, None)
                continue
            added += self._settle(item, events.group_fields(gid, found[1:], f"{item.at:.3f}"))
        return added
