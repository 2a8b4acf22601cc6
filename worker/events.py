"""Completion events and group counters: what a final state adds to the result store.

Every terminal state (SUCCESS, FAILURE, REVOKED) a job reaches is appended to one Redis Stream
(core.keys.EVENTS_STREAM, `XADD MAXLEN ~ EVENTS_MAXLEN`), and a job of a group is counted
in its group's hash (core.keys.group_keys). The backend (worker/backend.py) stores results
through one Lua script, STORE; this module gives it the Lua that does the rest and the
arguments it needs, so every final state, whichever path stores it (a task's return, a bulk
message's images, Celery's own `mark_as_revoked`, a cancel or a deadline), goes through here.

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
from core.text import text

log = logging.getLogger(__name__)

DEFAULT_MAXLEN = 100_000
# What a message may carry: longer, or not a string, and it is ignored (no group, no webhook).
MAX_GROUP_CHARS = 255
MAX_WEBHOOK_CHARS = 8192

# Lua for STORE (worker/backend.py) and ACCOUNT. Written for a call's cost: STORE runs once
# per stored state of a single message, so what a call without groups never uses is never
# built (the group functions are assigned only when the call names a group), and a key that
# needs no event costs a table lookup.
#
# A call counts its jobs group by group: per job one HSETNX on the group's `done` hash (the
# common case: a job ending for the first time), and per group and call the counters' HINCRBYs,
# so a bulk message's images cost one command each. `tally` opens a group's tally in a call
# (reading its total: no total, no such group, nothing is written), `count` counts one job,
# `settle` writes the tally and says whether this call ended the group's last job.
GROUP_LOCALS = "local COUNTER, keep, tally, count, settle, summary\n"
GROUPS = """
COUNTER = {SUCCESS = 'succeeded', FAILURE = 'failed', REVOKED = 'cancelled'}
-- A group's keys live as long as its results (RESULT_EXPIRES): while jobs are left the TTL is
-- only ever raised (at the first job's end, then every 256), once the last one ended it is
-- set; 0 keeps them, as it keeps results.
keep = function(keys, ttl, exact)
  for _, key in ipairs(keys) do
    if ttl <= 0 then redis.call('PERSIST', key)
    elseif exact then redis.call('EXPIRE', key, ttl)
    else redis.call('EXPIRE', key, ttl, 'GT') end
  end
end
tally = function(keys, gid)
  local total = redis.call('HGET', keys[1], 'total')
  return {keys = keys, gid = gid, total = total and tonumber(total), add = {}, new = 0}
end
-- Returns -1: no such group; 0: counted before with this state; 1: counted now (or moved
-- from the state it was counted with: a FAILURE replaced by a SUCCESS).
count = function(t, tid, state)
  if not t.total then return -1 end
  if redis.call('HSETNX', t.keys[2], tid, state) == 1 then
    t.new = t.new + 1
  else
    local prev = redis.call('HGET', t.keys[2], tid)
    if prev == state then return 0 end
    redis.call('HSET', t.keys[2], tid, state)
    if COUNTER[prev] then t.add[COUNTER[prev]] = (t.add[COUNTER[prev]] or 0) - 1 end
  end
  t.add[COUNTER[state]] = (t.add[COUNTER[state]] or 0) + 1
  return 1
end
settle = function(t, now, ttl)
  if not t.total then return false end
  for name, n in pairs(t.add) do
    if n ~= 0 then redis.call('HINCRBY', t.keys[1], name, n) end
  end
  if t.new == 0 then return false end
  local finished = redis.call('HINCRBY', t.keys[1], 'finished', t.new)
  local before = finished - t.new
  if before == 0 then redis.call('HSET', t.keys[1], 'first_done', now) end
  if finished >= t.total and redis.call('HSETNX', t.keys[1], 'completed', now) == 1 then
    keep(t.keys, ttl, true)
    return true
  end
  if before == 0 or math.floor(before / 256) ~= math.floor(finished / 256) then
    keep(t.keys, ttl, false)
  end
  return false
end
summary = function(keys)
  local f = redis.call('HMGET', keys[1], 'queue', 'webhook', 'total', 'succeeded', 'failed',
    'cancelled', 'tenant')
  for i = 1, 7 do f[i] = f[i] or ((i > 2 and i < 7) and '0' or '') end
  return f
end
"""

# STORE's parts (worker/backend.py), inlined in its one loop over the result keys: a script
# call pays for every closure and table it makes, and STORE runs once per single job. Read
# by STORE with, in scope: `nkeys` and `norig` (ARGV[4], ARGV[9]), `call` (redis.call), and
# KEYS and ARGV as locals.
#
# ANNOUNCE_SETUP, before the loop: ARGV[5..8] (the events' MAXLEN, now, the groups' TTL,
# report) and the origins (from ARGV[10]: 6 values each, label, queue, group, the group's
# index, webhook, tenant), and the group functions when the call names a group.
ANNOUNCE_SETUP = (
    GROUP_LOCALS
    + """
local maxlen, now, gttl = ARGV[5], ARGV[6], nil
local events_on, trimmed, trim_to = maxlen ~= '0', false, maxlen
if events_on and nkeys > 1 then  -- the first event trims, leaving room for the others
  trim_to = tostring(math.max(tonumber(maxlen) - nkeys + 1, 1))
end
local report, stream = ARGV[8] == '1', KEYS[nkeys + 1]
local ORIGIN = {}  -- an origin's label -> where its values start
for b = 10, 9 + 6 * norig, 6 do ORIGIN[ARGV[b]] = b end
local tallies, order = nil, nil
if #KEYS > nkeys + 1 then
"""
    + GROUPS
    + """
  tallies, order, gttl = {}, {}, tonumber(ARGV[7])
end
"""
)

# ANNOUNCE_KEY, for each key once its state is settled, with in scope `a` (where the key's
# values start: its id at a + 3, its origin's label at a + 5), `was` (the state stored
# before), `now_state` (the one stored now) and `err` (its error type): a job's event when it
# has just reached a final state, or when its group counted it now (the call's first event
# trims the stream, `MAXLEN ~`, to leave room for the call's others: one check per call).
# Sets `code`, what a `report` call returns for the key: '' (not final), its final state, or
# '+' and the state just reached (a cluster's result calls, which announce in calls of their
# own).
ANNOUNCE_KEY = """
  local code = ''
  if now_state == 'SUCCESS' or now_state == 'FAILURE' or now_state == 'REVOKED' then
    local fresh = was ~= now_state
    local b = ORIGIN[ARGV[a + 5]]
    if b then
      local tid, emit, gid = ARGV[a + 3], fresh, ARGV[b + 2]
      local g = tallies and tonumber(ARGV[b + 3]) or 0
      if g > 0 then
        local t = tallies[g]
        if not t then
          local base = nkeys + 3 * g - 1
          t = tally({KEYS[base], KEYS[base + 1], KEYS[base + 2]}, gid)
          tallies[g] = t
          order[#order + 1] = g
        end
        local r = count(t, tid, now_state)
        if r >= 0 then emit = r > 0 end
      end
      if emit and events_on and trimmed then
        call('XADD', stream, '*', 'kind', 'job', 'id', tid, 'state', now_state, 'error', err,
          'queue', ARGV[b + 1], 'group', gid, 'webhook', ARGV[b + 4], 'time', now,
          'tenant', ARGV[b + 5])
      elseif emit and events_on then  -- the call's first event trims for all of them
        trimmed = true
        call('XADD', stream, 'MAXLEN', '~', trim_to, '*', 'kind', 'job', 'id', tid,
          'state', now_state, 'error', err, 'queue', ARGV[b + 1], 'group', gid,
          'webhook', ARGV[b + 4], 'time', now, 'tenant', ARGV[b + 5])
      end
    end
    if report then code = (fresh and '+' or '') .. now_state end
  end
"""

# ANNOUNCE_END, after the loop: each group's tally written, and the completion event of a
# group whose last job the call ended (after its jobs' events).
ANNOUNCE_END = """
if tallies then
  for _, g in ipairs(order) do
    local t = tallies[g]
    if settle(t, now, gttl) and events_on then
      local f = summary(t.keys)
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'kind', 'group', 'id', t.gid,
        'state', 'DONE', 'error', '', 'queue', f[1], 'group', t.gid, 'webhook', f[2],
        'time', now, 'total', f[3], 'succeeded', f[4], 'failed', f[5], 'cancelled', f[6],
        'tenant', f[7])
    end
  end
end
"""

# A Redis Cluster's second call, on the group's master: KEYS the group's three keys; ARGV the
# group id, now, ttl, then (task id, state) pairs. Returns `count`'s answer per pair, then,
# when the last job ended, the group's queue, webhook, total, succeeded, failed, cancelled and
# tenant.
ACCOUNT = (
    GROUP_LOCALS
    + GROUPS
    + """
local t, out = tally(KEYS, ARGV[1]), {}
for i = 4, #ARGV, 2 do
  out[#out + 1] = count(t, ARGV[i], ARGV[i + 1])
end
if settle(t, ARGV[2], tonumber(ARGV[3])) then
  for _, v in ipairs(summary(KEYS)) do out[#out + 1] = v end
end
return out
"""
)


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
    """The result store's events and group keys (after REDIS_KEY_PREFIX), and STORE's
    arguments for them."""

    def __init__(self, key_prefix: str = "", maxlen: int = DEFAULT_MAXLEN) -> None:
        self.key_prefix = key_prefix
        self.maxlen = max(0, int(maxlen))
        self.stream = key_prefix + EVENTS_STREAM

    def group_keys(self, group_id: str) -> list[str]:
        """A group's hash, its `done` hash and its ids list (one hash tag: one slot)."""
        return list(group_keys(group_id, self.key_prefix))

    def script(
        self, notes: Sequence[Note | None], group_ttl: int, announce: bool = True
    ) -> tuple[list[str], list[Any], list[list[Any]]]:
        """What STORE needs besides the results: its extra KEYS (the stream, then three per
        group), its ARGV[4..] before the keys' values (count of result keys, maxlen, now, the
        groups' TTL, report, then the origins: how many, and per origin its label, queue,
        group, the group's index among the extra keys, webhook and tenant), and per result key
        the three values after its state and value (id, error type, origin's label; 0: no
        event). The jobs of one message share one origin, so a bulk's images pass three
        values each. `announce=False` (a cluster's result calls): the script announces
        nothing and reports each key's final state."""
        groups: dict[str, int] = {}
        origins: dict[tuple[str, str, int, str, str], int] = {}
        per_key: list[list[Any]] = []
        for note in notes:
            if note is None or not announce:
                per_key.append([note.task_id if note else "", "", 0])
                continue
            index = groups.setdefault(note.group, len(groups) + 1) if note.group else 0
            origin = (note.queue, note.group, index, note.webhook, note.tenant)
            number = origins.setdefault(origin, len(origins) + 1)
            per_key.append([note.task_id, note.error, number])
        extra: list[str] = []
        if announce and any(n is not None for n in notes):
            extra.append(self.stream)
            for group in groups:
                extra += self.group_keys(group)
        head = [len(notes), self.maxlen if announce else 0, timestamp(), group_ttl]
        head.append(0 if announce else 1)  # report each key's code: a cluster's result calls
        head.append(len(origins))
        for origin, label in origins.items():
            head += [label, *origin]
        return extra, head, per_key


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


def group_fields(group_id: str, summary: Sequence[Any], now: str) -> dict[str, str]:
    """The `kind=group` event of a group whose last job ended, from ACCOUNT's summary."""
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


def maxlen_of(app: Any) -> int:
    """EVENTS_MAXLEN of a worker's app (its Settings), else the environment's, else the
    default (a backend built by a plain Celery app, in tests and benchmarks)."""
    settings = getattr(app, "settings", None)
    if settings is not None and hasattr(settings, "events_maxlen"):
        return int(settings.events_maxlen)
    import os

    raw = os.environ.get("EVENTS_MAXLEN", "").strip()
    try:
        return max(0, int(raw)) if raw else DEFAULT_MAXLEN
    except ValueError:
        return DEFAULT_MAXLEN
