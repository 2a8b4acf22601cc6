"""The Redis result backend, storing each state change in one atomic round trip.

Celery's key-value backend reads a job's stored state before every write, so that a late
duplicate cannot overwrite a SUCCESS: a GET (and a JSON decode) then a SET + PUBLISH, two
round trips per state and two states per job (STARTED, then the outcome). Here one Lua script
does the same check and write inside Redis: half the round trips, and no window between the
check and the write in which a duplicate could slip through.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

# KEYS[1]: the result key; ARGV[1]: the encoded meta; ARGV[2]: seconds to keep it (0: forever).
_STORE = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackend(RedisBackend):
    """Celery's Redis backend with the read-before-write done server-side (see module doc)."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        self.ensure(self._store_unless_succeeded, (self.get_key_for_task(task_id), value))
        return result

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(_STORE)

    def _store_unless_succeeded(self, key: bytes | str, value: str | bytes) -> bool:
        expires = int(self.expires or 0)
        return bool(self._store_script(keys=[key], args=[value, expires]))
