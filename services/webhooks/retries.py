"""The retry set (core.keys.WEBHOOK_RETRIES: deliveries scored by when each is due) and the dead
letters (WEBHOOK_DEAD_LETTERS, newest first, capped at DEAD_LETTER_LIMIT).

A dispatcher leases due deliveries by moving their score past the lease's end, so one that
dies mid-attempt only delays them; it then replaces each by its next attempt or removes it,
only while it is still there: another dispatcher may have taken it over after the lease ran out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from core.keys import WEBHOOK_DEAD_LETTERS, WEBHOOK_RETRIES
from services.webhooks.deliveries import Outcome

log = logging.getLogger("imgqueue.webhooks")

# Due deliveries (at most ARGV[3]) move to ARGV[2] (the lease's end); also the earliest score.
_LEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, first[2] or ''}
"""
# Leased deliveries, each replaced by its next attempt (ARGV[i + 1] at ARGV[i + 2]) or removed
# (''), only while it is still there.
_REPLACE = """
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    if ARGV[i + 1] ~= '' then redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i + 1]) end
    n = n + 1
  end
end
return n
"""


class RetrySet:
    """The retry set and the dead letters of one key prefix."""

    def __init__(self, store: Any, prefix: str, dead_letter_limit: int) -> None:
        self.store = store
        self.key = prefix + WEBHOOK_RETRIES
        self.dead = prefix + WEBHOOK_DEAD_LETTERS
        self.dead_letter_limit = dead_letter_limit
        self._lease = store.register_script(_LEASE)
        self._replace = store.register_script(_REPLACE)

    def lease(self, now: float, until: float, room: int) -> tuple[list[Any], float | None]:
        """Up to `room` deliveries due by `now`, leased until `until`; and when the earliest
        left is due (None: the set is empty)."""
        due, first = self._lease(keys=[self.key], args=[repr(now), repr(until), room])
        return list(due), float(first) if first else None

    def bury(self, dead: Sequence[str]) -> None:
        """Record dead letters (JSON), newest first, capped; one log line each."""
        pipe = self.store.pipeline(transaction=False)
        pipe.lpush(self.dead, *dead)
        pipe.ltrim(self.dead, 0, self.dead_letter_limit - 1)
        pipe.execute()
        for entry in dead:
            log.warning("webhook given up: %s", entry)

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Each leased member removed, or replaced by its next attempt, in one call."""
        args: list[Any] = []
        for o in outcomes:
            args += [o.member, o.new, repr(o.due)]
        self._replace(keys=[self.key], args=args)
