"""The dead-letter list: messages no worker can run, kept with the reason, never retried by itself.

Workers move a message here when it is not JSON, lacks envelope fields, has a body that cannot
be decoded, names a task the service does not run, is over MAX_MESSAGE_BYTES, or was rejected
(`core.contract.DEAD_LETTER_REASONS`). The list is `imgqueue:dead-letters` (after
REDIS_KEY_PREFIX; core/keys.py), newest first; each entry is one JSON object:

    {"id": "5f0c...", "reason": "not-json", "detail": "...", "queue": "celery",
     "list": "celery", "at": 1764312345.1, "worker": "host-4242", "size": 1,
     "truncated": false, "message": "x"}

`message` is the message exactly as it was in its queue (`message_b64` instead when it is not
UTF-8), cut to MAX_KEPT bytes when larger (`truncated`). `imgqueue dead-letters` lists,
requeues and purges them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from core.connections import RedisConfig
from core.keys import Keys

MAX_KEPT = 64 * 1024

# Move one entry back to its list, only if it is still in the dead-letter list (atomic, so
# two operators requeueing at once cannot duplicate it).
_REQUEUE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""


def make_entry(
    raw: bytes,
    reason: str,
    detail: str,
    *,
    queue: str,
    list_key: str,
    worker: str,
) -> str:
    """The JSON text of a dead-letter entry for `raw`, the message as it was in `list_key`."""
    kept = raw[:MAX_KEPT]
    entry: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "reason": reason,
        "detail": detail[:500],
        "queue": queue,
        "list": list_key,
        "at": round(time.time(), 3),
        "worker": worker,
        "size": len(raw),
        "truncated": len(raw) > MAX_KEPT,
    }
    try:
        entry["message"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        entry["message_b64"] = base64.b64encode(kept).decode("ascii")
    return json.dumps(entry, sort_keys=True)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter list."""

    id: str
    reason: str
    detail: str
    queue: str
    list_key: str
    at: float
    size: int
    truncated: bool
    message: bytes
    raw_entry: bytes

    @classmethod
    def parse(cls, raw_entry: bytes) -> DeadLetter:
        data = json.loads(raw_entry)
        if "message_b64" in data:
            message = base64.b64decode(data["message_b64"])
        else:
            message = str(data.get("message", "")).encode("utf-8")
        return cls(
            id=str(data.get("id", "")),
            reason=str(data.get("reason", "")),
            detail=str(data.get("detail", "")),
            queue=str(data.get("queue", "")),
            list_key=str(data.get("list", "")),
            at=float(data.get("at", 0.0)),
            size=int(data.get("size", len(message))),
            truncated=bool(data.get("truncated", False)),
            message=message,
            raw_entry=raw_entry,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "queue": self.queue,
            "at": self.at,
            "size": self.size,
            "truncated": self.truncated,
        }
        try:
            out["message"] = self.message.decode("utf-8")
        except UnicodeDecodeError:
            out["message_b64"] = base64.b64encode(self.message).decode("ascii")
        return out


class DeadLetters:
    """List, requeue and purge dead letters (`imgqueue dead-letters ...` uses this)."""

    def __init__(self, client: redis.Redis, config: RedisConfig) -> None:
        self.client = client
        self.config = config
        self.keys = Keys(config.key_prefix)
        self.key = self.keys.dead_letters
        self._requeue = client.register_script(_REQUEUE)

    def count(self) -> int:
        return int(self.client.llen(self.key))

    def read(self, limit: int | None = None) -> list[DeadLetter]:
        """Newest first."""
        end = -1 if limit is None else max(limit, 1) - 1
        return [DeadLetter.parse(_bytes(raw)) for raw in self.client.lrange(self.key, 0, end)]

    def _select(self, ids: Iterable[str] | None) -> tuple[list[DeadLetter], list[str]]:
        entries = self.read()
        if ids is None:
            return entries, []
        wanted = list(dict.fromkeys(ids))
        by_id = {e.id: e for e in entries}
        # Ids may be given shortened, as `list` prints them.
        chosen: list[DeadLetter] = []
        missing: list[str] = []
        for want in wanted:
            hits = [e for i, e in by_id.items() if i.startswith(want)] if want else []
            if len(hits) == 1:
                chosen.append(hits[0])
            else:
                missing.append(want)
        return chosen, missing

    def requeue(self, ids: Iterable[str] | None = None) -> tuple[int, list[str]]:
        """Put entries (all when `ids` is None) back at the tail of their queue's list.

        Returns (requeued, problems): ids not found, and truncated entries, which cannot be
        requeued because only their first MAX_KEPT bytes were kept.
        """
        chosen, problems = self._select(ids)
        done = 0
        for entry in chosen:
            if entry.truncated:
                problems.append(f"{entry.id} (truncated: only {MAX_KEPT} bytes kept)")
                continue
            target = self.keys.queue_list(entry.list_key)
            args = [entry.raw_entry, entry.message]
            done += int(self._requeue(keys=[self.key, target], args=args))
        return done, problems

    def purge(self, ids: Iterable[str] | None = None) -> tuple[int, list[str]]:
        """Delete entries (all when `ids` is None); returns (deleted, ids not found)."""
        if ids is None:
            with self.client.pipeline() as pipe:
                pipe.llen(self.key)
                pipe.delete(self.key)
                count = int(pipe.execute()[0])
            return count, []
        chosen, missing = self._select(ids)
        done = 0
        for entry in chosen:
            done += int(self.client.lrem(self.key, 1, entry.raw_entry))  # type: ignore[arg-type]
        return done, missing


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
