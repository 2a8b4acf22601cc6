"""STORE, the result store's Lua script, and `arguments`, the one function that builds its KEYS
and ARGV (their positional layout is spelled here only).

One call stores the final states of a message's jobs (worker/backend.py says what may replace
what), appends each job's completion event to the stream and counts a group's jobs
(worker/events.py says what an event is). ACCOUNT, a Redis Cluster's second call on a group's
master (worker/results_cluster.py), shares the group code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.events import Events, Note, timestamp

# Lua for STORE (below) and ACCOUNT. Written for a call's cost: STORE runs once
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

# STORE's parts, inlined in its one loop over the result keys: a script
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

# KEYS: the result keys, then the events stream and three keys per group.
# ARGV[1]: publish (1) or not (0); ARGV[2], ARGV[3]: seconds to keep a FAILURE and any other
# state (0: forever); ARGV[4..8]: how many result keys, the events' MAXLEN (0: none), now, the
# groups' TTL, report (1: return each key's code); ARGV[9]: how many origins, then 6 values
# each (its label, then what the events of one message's jobs share: queue, group, the
# group's index, webhook, tenant); then per key 5 values: its state, its encoded meta, its id,
# its error type and its origin's label (0: no event). A key whose old value is final and may
# not be replaced gets the old value back, with the expiry of its state restarted. A key that
# ends in a final state is announced (ANNOUNCE_KEY): an event when it has just reached
# that state, and its group's counters. Returns how many keys took the new state; with
# report, a list: that, then per key '' (not final), its final state, or '+' and the state
# just reached.
STORE = (
    """
local KEYS, ARGV, call = KEYS, ARGV, redis.call  -- locals: faster than globals
local publish, stored, n = ARGV[1] == '1', {}, 0
local nkeys, norig = tonumber(ARGV[4]), tonumber(ARGV[9])
local first = 9 + 6 * norig
-- Numbers go to redis.call as the strings they came as (a Lua number is formatted anew by
-- each call), and are compared as strings: tonumber parses with strtod, a cost per call.
local TTL = {FAILURE = ARGV[2]}
local other_ttl = ARGV[3]
"""
    + ANNOUNCE_SETUP
    + """
local codes = {n}
for i = 1, nkeys do
  local key, a = KEYS[i], first + 5 * (i - 1)
  local state, value = ARGV[a + 1], ARGV[a + 2]
  local ttl, old = TTL[state] or other_ttl, nil
  if ttl ~= '0' then
    old = call('SET', key, value, 'EX', ttl, 'GET')
  else
    old = call('SET', key, value, 'GET')
  end
  local was, meta = nil, nil
  if old then
    -- Celery's JSON opens with the status: a STARTED or RETRY replaced needs no decoding.
    was = string.match(old, '^{"status": "(%u+)"')
    if was == nil or was == 'SUCCESS' or was == 'FAILURE' then
      local ok, decoded = pcall(cjson.decode, old)
      was = nil
      if ok and type(decoded) == 'table' then was, meta = decoded['status'], decoded end
    end
  end
  local now_state, err = state, ARGV[a + 4]
  if was == 'SUCCESS' or (was == 'FAILURE' and state ~= 'SUCCESS') then
    ttl = TTL[was] or other_ttl
    if ttl ~= '0' then
      redis.call('SET', key, old, 'EX', ttl)
    else
      redis.call('SET', key, old)
    end
    now_state, err = was, ''
    local result = meta['result']
    if type(result) == 'table' and type(result['exc_type']) == 'string' then
      err = result['exc_type']
    end
  else
    n = n + 1
    if publish then stored[#stored + 1] = i end
  end
"""
    + ANNOUNCE_KEY
    + """
  codes[i + 1] = code
end
"""
    + ANNOUNCE_END
    + """
if #stored > 0 then
  local channels = {}
  for j, i in ipairs(stored) do channels[j] = KEYS[i] end
  local subs = redis.call('PUBSUB', 'NUMSUB', unpack(channels))
  for j = 2, #subs, 2 do
    if subs[j] > 0 then
      local i = stored[j / 2]
      redis.call('PUBLISH', KEYS[i], ARGV[first + 5 * (i - 1) + 2])
    end
  end
end
if report then
  codes[1] = n
  return codes
end
return n
"""
)


# An origin: what the events of one message's jobs share (queue, group, the group's index
# among the extra KEYS, webhook, tenant).
_Origin = tuple[str, str, int, str, str]


def arguments(
    values: Sequence[tuple[Any, Any, str]],
    notes: Sequence[Note | None],
    events: Events,
    *,
    publish: bool,
    failure_ttl: int,
    other_ttl: int,
    group_ttl: int,
    announce: bool = True,
) -> tuple[list[Any], list[Any]]:
    """STORE's KEYS and ARGV (the layout above) for `(key, value, state)` entries and what
    each one's event says (`notes`; None: no event). The jobs of one message share one
    origin, so a bulk's images pass five values each. `failure_ttl`, `other_ttl`,
    `group_ttl`: seconds (0: kept). `announce=False` (a cluster's result calls): the script
    announces nothing and reports each key's final state."""
    groups: dict[str, int] = {}
    origins: dict[_Origin, int] = {}
    per_key: list[tuple[str, str, int]] = []
    for note in notes:
        if note is None or not announce:
            per_key.append((note.task_id if note else "", "", 0))
            continue
        index = groups.setdefault(note.group, len(groups) + 1) if note.group else 0
        origin = (note.queue, note.group, index, note.webhook, note.tenant)
        per_key.append((note.task_id, note.error, origins.setdefault(origin, len(origins) + 1)))
    keys: list[Any] = [key for key, _, _ in values]
    if announce and any(n is not None for n in notes):
        keys.append(events.stream)
        for group in groups:
            keys += events.group_keys(group)
    args: list[Any] = [
        1 if publish else 0,
        failure_ttl,
        other_ttl,
        len(values),
        events.maxlen if announce else 0,
        timestamp(),
        group_ttl,
        0 if announce else 1,  # report each key's code: a cluster's result calls
        len(origins),
    ]
    for origin, label in origins.items():
        args += [label, *origin]
    for (_, value, state), (task_id, error, label) in zip(values, per_key, strict=True):
        args += [state, value, task_id, error, label]
    return keys, args
