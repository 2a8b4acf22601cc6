"""Job groups: one id for many jobs, with counters, progress, an ETA and one completion event.

`Client.submit_many(..., group=True)` writes the group to the result store before sending any
message (`create`): a hash with its total and metadata, and the list of its task ids. Every
message carries the group id (core.lifecycle.GROUP_HEADER), and the worker that stores a job's
final state counts it in the group, once, inside the same script (worker/events.py); the last
job to end appends one `kind=group` event to the events stream.

Keys (core.lifecycle.group_key, one hash tag so a Redis Cluster keeps them on one master):

    imgqueue:group:{<gid>}        hash: total, queue, model, created, webhook, tenant (when
                                  submitted with one); succeeded, failed, cancelled, finished;
                                  first_done, completed
    imgqueue:group:{<gid>}:ids    list of its task ids, in submit order
    imgqueue:group:{<gid>}:done   hash task id -> the final state it was counted with

They expire: WAIT_EXPIRES after submit until a job ends, then as long as results
(RESULT_EXPIRES, refreshed as jobs end, set when the last one ends).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import UnknownGroup
from core.keys import group_keys
from core.text import text

__all__ = ["GroupIds", "GroupStatus", "UnknownGroup"]  # UnknownGroup: in core.errors

# How long a group waits for its first jobs to end before it expires (a backlog of a week).
WAIT_EXPIRES = 7 * 24 * 3600
# Ids per RPUSH at submit, and per LRANGE page when reading them back.
_IDS_PAGE = 1000


class GroupIds(list[str]):
    """What `submit_many(..., group=True)` returns: the task ids in order, as always (it is a
    list), and `group_id` for `Client.group()`, `imgqueue status GROUP` and the events."""

    def __init__(self, ids: Sequence[str], group_id: str) -> None:
        super().__init__(ids)
        self.group_id = group_id


def new_id() -> str:
    return str(uuid.uuid4())


def keys(group_id: str, key_prefix: str = "") -> tuple[str, str, str]:
    """The group's hash, its `done` hash and its ids list (core.keys.group_keys)."""
    return group_keys(group_id, key_prefix)


def create(
    client: Any,
    group_id: str,
    task_ids: Sequence[str],
    *,
    key_prefix: str = "",
    queue: str = "",
    model: str = "",
    webhook: str = "",
    tenant: str = "",
) -> None:
    """Write a group before its messages are sent: the ids first, then the hash (a worker
    counts a job only once the hash exists, and the hash is never there without its ids).
    `tenant`: whose group it is (a gateway answers only its owner), left out when none.
    One pipeline; the keys share a slot, so a cluster client sends it to one master."""
    meta, _, ids = keys(group_id, key_prefix)
    pipe = client.pipeline(transaction=False)
    pipe.delete(ids)
    for start in range(0, len(task_ids), _IDS_PAGE):
        pipe.rpush(ids, *task_ids[start : start + _IDS_PAGE])
    pipe.expire(ids, WAIT_EXPIRES)
    pipe.hset(
        meta,
        mapping={
            "total": len(task_ids),
            "queue": queue,
            "model": model,
            "webhook": webhook,
            "created": f"{time.time():.3f}",
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
            "finished": 0,
            **({"tenant": tenant} if tenant else {}),
        },
    )
    pipe.expire(meta, WAIT_EXPIRES)
    pipe.execute()


def discard(client: Any, group_id: str, key_prefix: str = "") -> None:
    """Remove a group none of whose messages could be sent."""
    pipe = client.pipeline(transaction=False)
    for key in keys(group_id, key_prefix):
        pipe.delete(key)
    pipe.execute()


@dataclass(frozen=True)
class GroupStatus:
    """A group's counts now. `succeeded`, `failed` and `cancelled` (REVOKED) are exact: each
    job counts once, with its last final state. `running` are the unfinished jobs whose state
    is STARTED (or RETRY); `queued` the rest of them."""

    id: str
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    created: float
    first_done: float | None
    completed: float | None
    queue: str = ""
    model: str = ""
    webhook: str = ""
    now: float = 0.0
    tenant: str = ""  # whose group it is, when submitted with a tenant

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def done(self) -> bool:
        return self.completed is not None or (self.total > 0 and self.finished >= self.total)

    @property
    def progress(self) -> float:
        """Finished jobs over all, 0.0 .. 1.0."""
        return 1.0 if not self.total else min(1.0, self.finished / self.total)

    @property
    def rate(self) -> float | None:
        """Jobs ended per second since the first one ended (None until two have)."""
        if self.first_done is None or self.finished < 2:
            return None
        end = self.completed if self.completed is not None else self.now
        elapsed = end - self.first_done
        return (self.finished - 1) / elapsed if elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds until the last job ends at the rate so far (0 once done; None until two
        jobs have ended)."""
        if self.done:
            return 0.0
        rate = self.rate
        if not rate:
            return None
        return (self.total - self.finished) / rate

    def to_dict(self) -> dict[str, Any]:
        eta = self.eta
        return {
            "id": self.id,
            "total": self.total,
            "queued": self.queued,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "finished": self.finished,
            "progress": round(self.progress, 4),
            "done": self.done,
            "eta_seconds": None if eta is None else round(eta, 1),
            "rate_per_second": None if self.rate is None else round(self.rate, 2),
            "created": self.created,
            "first_done": self.first_done,
            "completed": self.completed,
            "queue": self.queue,
            "model": self.model,
            "webhook": self.webhook or None,
        }

    def render(self) -> str:
        """The human form (`imgqueue status GROUP`)."""
        eta = self.eta
        if self.done:
            when = "done"
            if self.completed is not None:
                took = self.completed - self.created
                when = f"done in {took:.1f}s after submit"
        elif eta is None:
            when = "ETA unknown (fewer than two jobs have ended)"
        else:
            when = f"ETA {_duration(eta)}"
            if self.rate:
                when += f" at {self.rate:.1f} jobs/s"
        lines = [
            f"group {self.id}  queue {self.queue or '?'}"
            + (f"  model {self.model}" if self.model else ""),
            f"  {self.finished}/{self.total} finished ({self.progress:.1%}), {when}",
            f"  queued {self.queued}  running {self.running}  succeeded {self.succeeded}"
            f"  failed {self.failed}  cancelled {self.cancelled}",
        ]
        if self.webhook:
            lines.append(f"  webhook {self.webhook}")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _float(raw: Any) -> float | None:
    if raw in (None, b"", ""):
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def _int(raw: Any) -> int:
    value = _float(raw)
    return 0 if value is None else int(value)


def read_meta(client: Any, group_id: str, key_prefix: str = "") -> dict[str, str]:
    """The group's hash, decoded; UnknownGroup when there is none."""
    meta_key, _, _ = keys(group_id, key_prefix)
    raw = client.hgetall(meta_key)
    if not raw:
        raise UnknownGroup(f"no group {group_id!r} (never created, or expired with its results)")
    return {text(k): text(v) for k, v in raw.items()}


def iter_ids(client: Any, group_id: str, key_prefix: str = "") -> Iterator[list[str]]:
    """The group's task ids, in submit order, a page at a time."""
    _, _, ids_key = keys(group_id, key_prefix)
    start = 0
    while True:
        page = [text(i) for i in client.lrange(ids_key, start, start + _IDS_PAGE - 1)]
        if page:
            yield page
        if len(page) < _IDS_PAGE:
            return
        start += _IDS_PAGE


def status(
    client: Any,
    group_id: str,
    key_prefix: str,
    states: Any,
) -> GroupStatus:
    """The group's counts. `states(ids)` returns the current state of each id (the client's
    result reads): it is asked only about jobs the group has not counted as finished, to tell
    running from queued, and not at all once every job has ended."""
    meta = read_meta(client, group_id, key_prefix)
    total = _int(meta.get("total"))
    succeeded, failed = _int(meta.get("succeeded")), _int(meta.get("failed"))
    cancelled = _int(meta.get("cancelled"))
    running = 0
    finished = succeeded + failed + cancelled
    if finished < total:
        _, done_key, _ = keys(group_id, key_prefix)
        counted = {text(i) for i in client.hkeys(done_key)}
        for page in iter_ids(client, group_id, key_prefix):
            waiting = [i for i in page if i not in counted]
            if waiting:
                running += sum(1 for s in states(waiting) if s in ("STARTED", "RETRY"))
    return GroupStatus(
        id=group_id,
        total=total,
        queued=max(0, total - finished - running),
        running=running,
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
        created=_float(meta.get("created")) or 0.0,
        first_done=_float(meta.get("first_done")),
        completed=_float(meta.get("completed")),
        queue=meta.get("queue", ""),
        model=meta.get("model", ""),
        webhook=meta.get("webhook", ""),
        now=time.time(),
        tenant=meta.get("tenant", ""),
    )


def wait_done(client: Any, group_id: str, timeout: float | None) -> GroupStatus:
    """Poll the group's counters (no result keys read) until every job has ended; raises
    ResultTimeout past `timeout`."""
    from core.errors import ResultTimeout

    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.05
    while True:
        meta = read_meta(client.results, group_id, client.result_config.key_prefix)
        finished = sum(_int(meta.get(k)) for k in ("succeeded", "failed", "cancelled"))
        if meta.get("completed") or finished >= _int(meta.get("total")):
            return client.group(group_id)  # type: ignore[no-any-return]
        if deadline is not None and time.monotonic() >= deadline:
            left = _int(meta.get("total")) - finished
            raise ResultTimeout(f"group {group_id}: {left} job(s) unfinished after {timeout}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
