"""The worker's side of the events' outbox on a Redis Cluster store (core/outbox.py: the
protocol): an intent per job and group before its final states are stored (INTEND), then the
events due appended and the intents settled in one script (ANNOUNCE), both called by the
backend (worker/results_cluster.py). The sweep of what a dead worker left is the webhook
dispatcher's (services/webhooks/sweeper.py).
"""

from __future__ import annotations

import os
import uuid

from core.outbox import flat as flat
from core.outbox import intent as intent

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


def new_token() -> str:
    """A store call's own token, which its intents carry (ANNOUNCE tells them from others')."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
