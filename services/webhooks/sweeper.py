"""The outbox's sweep, on a Redis Cluster result store: the events of results whose worker died
before announcing them, appended by the dispatcher every few seconds so their webhooks are not
lost (core/outbox.py: the protocol; worker/outbox.py: the worker's side).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from core.connections import mget
from core.keys import EVENTS_STREAM, group_key, outbox_key, result_key
from core.outbox import SUMMARY, Intent, flat, group_fields, read_intent
from core.states import FINAL_STATES, state_of
from core.text import text

log = logging.getLogger("imgqueue.webhooks")

GIVE_UP_SECONDS = 86_400.0  # an intent whose job is still unfinished this long is dropped
SWEEP_BATCH = 1000  # stale intents settled per sweep; the rest at the next

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


class Sweeper:
    """Settles the intents stores left behind (core/outbox.py) once they are `after` seconds
    old; the events go to the stream of `key_prefix`, trimmed to `maxlen` (0: events off)."""

    def __init__(self, store: Any, key_prefix: str, maxlen: int, after: float) -> None:
        self.store = store
        self.prefix = key_prefix
        self.stream = key_prefix + EVENTS_STREAM
        self.maxlen = max(0, int(maxlen))
        self.outbox = outbox_key(self.stream)
        self.after = after
        self._sweep = store.register_script(SWEEP)

    def sweep(self) -> int:
        """Append the events of stale intents; returns how many were appended."""
        if self.outbox is None:
            return 0
        now = time.time()
        stale: list[Intent] = []
        for raw_field, raw_value in self.store.hscan_iter(self.outbox, count=500):
            found = read_intent(text(raw_field), text(raw_value))
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

    def _settle(self, item: Intent, fields: dict[str, str] | None) -> int:
        args = [item.field, item.value, self.maxlen, flat(fields) if fields else ""]
        return int(self._sweep(keys=[self.stream, self.outbox], args=args))

    def _jobs(self, jobs: Sequence[Intent], now: float) -> int:
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

    def _groups(self, groups: Sequence[Intent], now: float) -> int:
        added = 0
        for item in groups:
            gid = item.field.split(":", 1)[1]
            found = self.store.hmget(self.prefix + group_key(gid), ["completed", *SUMMARY])
            if found[0] is None:  # not completed: whoever ends its last job announces it
                self._settle(item, None)
                continue
            added += self._settle(item, group_fields(gid, found[1:], f"{item.at:.3f}"))
        return added
