"""The delivery layer's Lua scripts: every move of a message is one atomic step.

The key layout is core/keys.py's (`Keys`, with its table of every key): these scripts take
their keys as KEYS, and SWEEP, which finds consumer ids as it goes, the prefixes of a
consumer's keys in ARGV (`Keys.consumer_prefixes`); they split an unacked value on its first
newline (`core.keys.unacked_value`).

A message is always in exactly one of: a queue list, an inbox, an unacked hash, the
dead-letter list. A consumer id belongs to one channel of one process; when its heartbeat
stops, any live worker's sweep returns its inboxes and unacked messages to their queues.
"""

from __future__ import annotations

# Scripts that only move a message or refresh a bookkeeping entry run even when Redis is at
# maxmemory (noeviction): they free as much as they take, and a full Redis must not stall
# acks, heartbeats or the sweep (a worker whose heartbeat fails looks dead). FETCH is the
# exception on purpose: a full Redis refuses it, so workers stop taking new jobs. Needs Redis 7.
ALLOW_OOM = "#!lua flags=allow-oom\n"

# Helpers shared by the scripts. An unacked value is "<queue list key>\n<message>" (JSON has
# no raw newline, and queue names carry none).
_LIB = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function return_entry(v)
  local nl = string.find(v, '\\n', 1, true)
  if not nl then return 0 end
  redis.call('RPUSH', string.sub(v, 1, nl - 1), string.sub(v, nl + 1))
  return 1
end
local function return_inboxes(inboxes)
  local n = 0
  local map = redis.call('HGETALL', inboxes)
  for i = 1, #map, 2 do
    while redis.call('LMOVE', map[i], map[i + 1], 'LEFT', 'RIGHT') do n = n + 1 end
  end
  return n
end
local function return_unacked(unacked, at)
  local n = 0
  local tags = redis.call('ZRANGE', at, 0, -1)
  -- Newest first, so the oldest message ends at the head (the right end) of its list.
  for i = #tags, 1, -1 do
    local v = redis.call('HGET', unacked, tags[i])
    if v then n = n + return_entry(v) end
    redis.call('HDEL', unacked, tags[i])
  end
  local rest = redis.call('HVALS', unacked)
  for i = 1, #rest do n = n + return_entry(rest[i]) end
  redis.call('DEL', unacked, at)
  return n
end
local function return_consumer(consumers, cid, inboxes, unacked, at)
  local n = return_inboxes(inboxes)
  n = n + return_unacked(unacked, at)
  redis.call('DEL', inboxes)
  redis.call('ZREM', consumers, cid)
  return n
end
"""

# KEYS: source list, its inbox, source list, its inbox, ... (highest priority first).
# ARGV[1]: how many messages to move at most (the consumer's free prefetch slots).
# Returns {pair index (1-based), message, pair index, message, ...}, or nil when all are empty.
FETCH = """
local want, out = tonumber(ARGV[1]) or 1, {}
for i = 1, #KEYS, 2 do
  while #out < 2 * want do
    local item = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'RIGHT', 'LEFT')
    if not item then break end
    out[#out + 1] = (i + 1) / 2
    out[#out + 1] = item
  end
  if #out >= 2 * want then break end
end
if #out == 0 then return false end
return out
"""

# The claim time in unacked-at: Redis's clock rounded up to whole seconds, as a string. An
# integer score keeps the ZSET's listpack comparing integers, not parsing a float per entry on
# every insert, and a hung message returns at most a second after its visibility timeout.
_CLAIMED_AT = "local claimed_at = tostring(math.ceil(now()))\n"

# Claim many messages at once. KEYS: unacked, unacked-at, then each message's inbox.
# ARGV: message as popped, delivery tag, unacked value, for each message in KEYS order.
# Returns 1 or 0 per message (0: it left its inbox meanwhile, returned by a sweep).
# Idempotent: a message no longer in its inbox whose tag is in unacked counts as claimed, so
# a call whose reply was lost with its connection can be sent again (a claimed message never
# delivered would be held for good).
CLAIM_MANY = (
    ALLOW_OOM
    + _LIB
    + _CLAIMED_AT
    + """
local out = {}
for i = 3, #KEYS do
  local j = 3 * (i - 3)
  if redis.call('LREM', KEYS[i], 1, ARGV[j + 1]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[j + 2], ARGV[j + 3])
    redis.call('ZADD', KEYS[2], claimed_at, ARGV[j + 2])
    out[#out + 1] = 1
  else
    out[#out + 1] = redis.call('HEXISTS', KEYS[1], ARGV[j + 2])
  end
end
return out
"""
)

# KEYS: inbox, unacked, unacked-at. ARGV: message as popped, delivery tag, unacked value.
# 0 when the message is no longer in the inbox (a sweep returned it to its queue meanwhile).
# Idempotent like CLAIM_MANY.
CLAIM = (
    ALLOW_OOM
    + _LIB
    + _CLAIMED_AT
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return redis.call('HEXISTS', KEYS[2], ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], claimed_at, ARGV[2])
return 1
"""
)

# KEYS: unacked, unacked-at. ARGV: delivery tag. Back to the head of its queue.
REQUEUE = (
    ALLOW_OOM
    + _LIB
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if v then return return_entry(v) end
return 0
"""
)

# Dead-letter a message still in an inbox. KEYS: inbox, dead-letters.
# ARGV: message as popped, entry, list cap. Returns -1 if it had left the inbox, else the
# number of oldest entries dropped to stay under the cap.
DEAD_LETTER_FROM_INBOX = (
    ALLOW_OOM
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return -1 end
redis.call('LPUSH', KEYS[2], ARGV[2])
local dropped = 0
while redis.call('LLEN', KEYS[2]) > tonumber(ARGV[3]) do
  redis.call('RPOP', KEYS[2])
  dropped = dropped + 1
end
return dropped
"""
)

# Dead-letter an unacked message. KEYS: unacked, unacked-at, dead-letters.
# ARGV: delivery tag, entry, list cap.
DEAD_LETTER_UNACKED = (
    ALLOW_OOM
    + """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
local dropped = 0
while redis.call('LLEN', KEYS[3]) > tonumber(ARGV[3]) do
  redis.call('RPOP', KEYS[3])
  dropped = dropped + 1
end
return dropped
"""
)

# Heartbeat. KEYS: consumers, inboxes:<cid>. ARGV: cid, then inbox, queue list pairs.
# Returns 0 when the consumer was not registered (first beat, or declared dead meanwhile).
BEAT = (
    ALLOW_OOM
    + _LIB
    + """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now(), ARGV[1])
if #ARGV > 1 then redis.call('HSET', KEYS[2], unpack(ARGV, 2)) end
if known then return 1 end
return 0
"""
)

# Return everything a consumer holds and forget it (a channel closing cleanly).
# KEYS: consumers, inboxes:<cid>, unacked:<cid>, unacked-at:<cid>. ARGV: cid.
RELEASE = (
    ALLOW_OOM
    + _LIB
    + """
return return_consumer(KEYS[1], ARGV[1], KEYS[2], KEYS[3], KEYS[4])
"""
)

# A live consumer's own inboxes back to their queues: replies lost with a connection.
# KEYS: inboxes:<cid>.
RECONCILE = (
    ALLOW_OOM
    + _LIB
    + """
return return_inboxes(KEYS[1])
"""
)

# The sweep, at most once per lock period across all workers. KEYS: consumers, sweep-lock.
# ARGV: the prefixes of a consumer's inboxes, unacked and unacked-at keys (each key is its
# prefix and the consumer id), dead-after seconds, visibility timeout seconds, lock ms.
# Returns nil when another worker swept recently, else
# {returned by visibility timeout, dead cid, messages returned, dead cid, ...}.
SWEEP = (
    ALLOW_OOM
    + _LIB
    + """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[6]) then return false end
local INBOXES, UNACKED, AT, t = ARGV[1], ARGV[2], ARGV[3], now()
local out = {0}
for _, cid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t - tonumber(ARGV[4]))) do
  table.insert(out, cid)
  table.insert(out, return_consumer(KEYS[1], cid, INBOXES .. cid, UNACKED .. cid, AT .. cid))
end
local expired = 0
for _, cid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local unacked, at = UNACKED .. cid, AT .. cid
  local tags = redis.call('ZRANGEBYSCORE', at, '-inf', t - tonumber(ARGV[5]))
  for i = #tags, 1, -1 do
    local v = redis.call('HGET', unacked, tags[i])
    if v then expired = expired + return_entry(v) end
    redis.call('HDEL', unacked, tags[i])
    redis.call('ZREM', at, tags[i])
  end
end
out[1] = expired
return out
"""
)
