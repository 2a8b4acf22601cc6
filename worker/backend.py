"""The Redis result backend, storing each state change in one atomic round trip.

Celery's key-value backend reads a job's stored state before every write, so that a late
duplicate cannot overwrite a SUCCESS: a GET (and a JSON decode) then a SET + PUBLISH, two
round trips per state and two states per job (STARTED, then the outcome). Here one Lua script
does the same check and write inside Redis: half the round trips, and no window between the
check and the write in which a duplicate could slip through.

What a stored state may be replaced by: SUCCESS by nothing; FAILURE only by a SUCCESS (a
redelivered copy that got through, or a dead letter requeued after a fix), never by a late
STARTED or RETRY of a duplicate. A FAILURE expires after `result_failure_expires`
(RESULT_FAILURE_EXPIRES), as Celery's own Redis backend does.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

# KEYS[1]: the result key; ARGV[1]: the encoded meta; ARGV[2]: seconds to keep it (0: forever);
# ARGV[3]: the new state.
_STORE = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' then
    if meta['status'] == 'SUCCESS' then return 0 end
    if meta['status'] == 'FAILURE' and ARGV[3] ~= 'SUCCESS' then return 0 end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class _AtomicStore:
    """The store of this module's doc, for Celery's Redis backend and its Sentinel variant."""

    expires: Any
    failure_expires: Any
    client: Any
    _MAX_STR_VALUE_SIZE: int

    if TYPE_CHECKING:

        def _get_result_meta(self, **kwargs: Any) -> dict[str, Any]: ...
        def encode(self, data: Any) -> Any: ...
        def encode_result(self, result: Any, state: str) -> Any: ...
        def get_key_for_task(self, task_id: str) -> Any: ...
        def ensure(self, fun: Any, args: Any, **policy: Any) -> Any: ...

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
        key = self.get_key_for_task(task_id)
        self.ensure(self._store_unless_final, (key, value, state))
        return result

    def store_many(self, entries: list[tuple[str, Any, str]]) -> None:
        """Final states of many jobs, `(task_id, result or exception, state)`, in one round
        trip (a bulk message's images), each stored as `_store_result` would."""
        values = []
        for task_id, result, state in entries:
            meta = self._get_result_meta(
                result=self.encode_result(result, state), state=state, traceback=None, request=None
            )
            meta["task_id"] = task_id
            value = self.encode(meta)
            if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
                raise BackendStoreError("value too large for Redis backend", task_id=task_id)
            values.append((self.get_key_for_task(task_id), value, state))
        if values:
            self.ensure(self._store_all_unless_final, (values,))

    def _store_all_unless_final(self, values: list[tuple[Any, Any, str]]) -> None:
        # Built inside the retried call: a pipeline that failed is reset and must be rebuilt.
        pipe = self.client.pipeline(transaction=False)
        for key, value, state in values:
            expires = self.failure_expires if state == states.FAILURE else self.expires
            self._store_script(keys=[key], args=[value, int(expires or 0), state], client=pipe)
        pipe.execute()

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(_STORE)

    def _store_unless_final(self, key: bytes | str, value: str | bytes, state: str) -> bool:
        expires = self.failure_expires if state == states.FAILURE else self.expires
        return bool(self._store_script(keys=[key], args=[value, int(expires or 0), state]))


class ResultBackend(_AtomicStore, RedisBackend):
    """Celery's Redis backend with the read-before-write done server-side (see module doc)."""


class SentinelResultBackend(_AtomicStore, SentinelBackend):
    """The same, through Redis Sentinel (`sentinel://` URLs and the `master_name` option)."""
