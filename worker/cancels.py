"""Cancels and deadlines on the worker's side: a job cancelled (producer/cancel.py) or past its
deadline before it starts ends REVOKED, with the error type `Cancelled` or `Expired`, and is
neither fetched nor inferred. Its state is stored through the backend's usual final-state path.

How a start and a cancel agree. A cancel is a key on the result store, `imgqueue:cancel:<id>`
(core.keys.cancel_key). Each side writes before it reads:

- the producer writes the key (`SET NX`), then reads the job's state;
- the worker writes the job's STARTED state (`SET NX`), then looks for the key.

So at least one sees the other. A producer that sees no state knows the worker will find the
key: the job is cancelled. One that sees STARTED takes its key back (`GETDEL`), while a worker
that finds a key takes it with `SET key taken XX GET`: whichever comes first wins. A producer
that gets its own value back reports the job too late (the worker finds nothing and runs it);
one that gets `taken` reports it cancelled. On one Redis the worker's write and look go in one
pipeline (a connection's commands run in order); on a Redis Cluster the two keys live on
different masters, so the look waits for the write (a second round trip).

A taken key stays until the job's REVOKED state is stored, then the worker deletes it: a worker
killed in between leaves it, and the redelivered job is cancelled again. A single job whose
state is already REVOKED when it starts (stored by a cancel before a worker died, or by Celery's
`control revoke`, which stores it for a job not yet started) ends at once, storing nothing; a
bulk message skips such images as it skips finished ones (worker/bulk.finished_ids).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import states
from celery.exceptions import Ignore

from core.connections import is_cluster_client, mget
from core.keys import cancel_key
from core.lifecycle import CANCEL_TAKEN, DEADLINE_HEADER
from core.states import state_of
from worker import result_store
from worker.errors import Cancelled, ClassifyError, Expired, InvalidArguments

if TYPE_CHECKING:
    from celery import Task

    from worker.backend import Started

log = logging.getLogger(__name__)

REVOKED = states.REVOKED


class Ended(Ignore):  # type: ignore[misc]  # celery is untyped
    """Raised out of a task whose job ended REVOKED, its state already stored: Celery then
    acknowledges the message and stores nothing more. `error` is None for a redelivered job
    that had ended before."""

    def __init__(self, error: ClassifyError | None) -> None:
        super().__init__(str(error) if error is not None else "the job had already ended")
        self.error = error


def marker(task_id: str, key_prefix: str = "") -> str:
    """The job's cancel key on the result store."""
    return key_prefix + cancel_key(task_id)


def cancelled() -> Cancelled:
    return Cancelled("the job was cancelled before it started")


# -- deadlines --------------------------------------------------------------------------------


def parse_deadline(value: Any, what: str = "deadline") -> float | None:
    """A deadline as sent (epoch seconds), or None; InvalidArguments when it is not a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArguments(f"{what} must be a time in epoch seconds, got {value!r:.60}")
    return float(value)


def header_deadline(request: Any) -> float | None:
    """A single message's deadline (DEADLINE_HEADER), None when it has none."""
    return parse_deadline(getattr(request, DEADLINE_HEADER, None), DEADLINE_HEADER)


def expired(deadline: float | None, now: float | None = None) -> Expired | None:
    """Expired when `deadline` (epoch seconds) has passed, else None."""
    if deadline is None:
        return None
    now = time.time() if now is None else now
    if now < deadline:
        return None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))
    return Expired(f"the job was not started by its deadline ({when}, {now - deadline:.1f}s ago)")


def check_deadline(request: Any, delivery: int) -> float | None:
    """A single job's deadline; raises Expired when it starts past it. A job that started
    before (a retry, a redelivery) has met its deadline: it is not checked again."""
    deadline = header_deadline(request)
    if delivery <= 1 and not request.retries:
        error = expired(deadline)
        if error is not None:
            raise error
    return deadline


def default_deadline(images: Sequence[Any], request: Any) -> None:
    """A bulk message's DEADLINE_HEADER holds for each of its images without a `deadline` of
    their own (a malformed one is ignored, logged: the images are valid)."""
    try:
        deadline = header_deadline(request)
    except InvalidArguments as exc:
        log.warning("bulk %s: %s; ignored", request.id, exc)
        return
    if deadline is not None:
        for image in images:
            if image.deadline is None:
                image.deadline = deadline


def monotonic(deadline: float | None) -> float | None:
    """An epoch deadline on this process's monotonic clock (the batcher's)."""
    return None if deadline is None else time.monotonic() + (deadline - time.time())


# -- a single job's start (worker/deliveries.record_start) ------------------------------------


@dataclass(frozen=True)
class Look:
    """What a single job's start adds to its round trip: take its cancel key. Whether the job
    has already ended REVOKED its STARTED write tells (`SET NX GET`: the state it found)."""

    key: str

    def add(self, pipe: Any) -> int:
        """Queue the command on a pipeline; returns how many replies it makes."""
        pipe.set(self.key, CANCEL_TAKEN, xx=True, get=True, keepttl=True)
        return 1

    def reply(self, client: Any, replies: Sequence[Any], queued: bool) -> Any:
        """This look's reply: the last of the start's pipeline, or (`queued` False, for a
        cluster) a round trip of its own, sent once the STARTED write has answered."""
        if not queued:
            pipe = client.pipeline(transaction=False)
            self.add(pipe)
            replies = pipe.execute(raise_on_error=False)
        mine = replies[-1]
        if isinstance(mine, Exception):
            raise mine
        return mine

    def verdict(self, reply: Any, found: Any = None) -> Exception | None:
        """Cancelled when the key was there; Ended when the job had already ended REVOKED
        (`found`: the state its STARTED write found stored)."""
        if reply is not None:
            return cancelled()
        if state_of(found) == REVOKED:
            return Ended(None)
        return None


def look(client: Any, task_id: str, key_prefix: str) -> tuple[Look, bool]:
    """The Look for a single job's start, and whether it may share the start's pipeline."""
    return Look(marker(task_id, key_prefix)), not is_cluster_client(client)


def end(task: Task, error: ClassifyError, key_prefix: str) -> Ended:
    """Store a single job's REVOKED state (cancelled or expired) and drop its cancel key;
    returns what the task raises."""
    request = task.request
    task.app.backend.store_result(request.id, error, REVOKED, request=request)
    if isinstance(error, Cancelled):
        release(task.app.backend.client, [request.id], key_prefix)
    log.info("job %s ended REVOKED: %s", request.id, error)
    return Ended(error)


def release(client: Any, task_ids: Iterable[str], key_prefix: str) -> None:
    """Delete taken cancel keys once their jobs' REVOKED states are stored (best effort: they
    expire anyway)."""
    keys = [marker(i, key_prefix) for i in task_ids]
    if not keys:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        pipe.execute()
    except result_store.ERRORS as exc:
        log.warning("cannot delete %d taken cancel(s): %s", len(keys), exc)


# -- a bulk message's images (worker/tasks.classify_many) -------------------------------------


class BulkStart:
    """A bulk message's first start, in its delivery count's round trip (deliveries.Rider):
    one `MSETNX` writes the STARTED state of the message and of every image, then one `MGET`
    reads the images' cancel keys. MSETNX writes all or nothing: where any of them has a
    state already (a duplicate, a revoke) it writes none and `written` stays False, as when
    the round trip fails; the images then start one by one (start_images).

    MSETNX sets no expiry: an image's STARTED lasts until this message stores its final state,
    with that state's expiry; an image that goes on in another message (a retry, the split of
    a redelivery) gets a `SET NX`'s expiry then (keep_started)."""

    def __init__(self, own: Started, images: list[Started], keys: list[str]) -> None:
        self.own = own
        self.images = images
        self.keys = keys  # the images' cancel keys
        self.written = False
        self.found: list[Any] = []

    def add(self, pipe: Any) -> int:
        pipe.msetnx({s.key: s.value for s in (self.own, *self.images)})
        pipe.mget(self.keys)
        return 2

    def settle(self, replies: Sequence[Any]) -> None:
        wrote, found = replies
        if not isinstance(wrote, Exception) and not isinstance(found, Exception):
            self.written, self.found = bool(wrote), list(found)


def bulk_start(
    task: Task, images: Sequence[Any], key_prefix: str, redelivered: bool
) -> BulkStart | None:
    """The BulkStart of a message's first delivery and first attempt, whose images have no
    state yet (unless duplicated); None for any other, and on a Redis Cluster (whose keys
    spread over masters: MSETNX takes keys of one slot only)."""
    backend, request = task.app.backend, task.request
    if redelivered or request.retries or not images or is_cluster_client(backend.client):
        return None
    hostname = request.hostname
    return BulkStart(
        backend.started(request.id, hostname),
        [backend.started(i.id, hostname) for i in images],
        [marker(i.id, key_prefix) for i in images],
    )


def keep_started(task: Task, task_ids: Sequence[str]) -> None:
    """Give a BulkStart's STARTED (written without an expiry) the expiry a `SET NX` gives it,
    for images that go on in other messages (a retry, the split of a redelivery): should
    those never run, the state still expires. Best effort: `EXPIRE NX` leaves a key that has
    an expiry (any other state) as it is."""
    backend = task.app.backend
    ttl = backend.started_ttl()
    if not task_ids or not ttl:
        return
    try:
        pipe = backend.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.expire(backend.get_key_for_task(task_id), ttl, nx=True)
        pipe.execute()
    except result_store.ERRORS as exc:
        log.warning("cannot set the expiry of %d started image(s): %s", len(task_ids), exc)


def start_images(
    task: Task,
    images: Sequence[Any],
    key_prefix: str,
    now: float | None = None,
    begun: BulkStart | None = None,
) -> dict[str, ClassifyError]:
    """Start a bulk message's images as single jobs start: each gets its STARTED state, then
    their cancel keys are read with one MGET and the found ones taken. Returns the images that
    must not run: id -> Cancelled or Expired (past the image's `deadline`). `images` have
    `id` and `deadline`. `begun`: the message's BulkStart; written, it did the first two
    steps for these images, else its message's own STARTED is written here too."""
    if not images:
        return {}
    client = task.app.backend.client
    keys = [marker(i.id, key_prefix) for i in images]
    try:
        if begun is not None and begun.written:
            found = begun.found
        else:
            found = _write_and_look(task, images, keys, begun.own if begun is not None else None)
        wanted = [key for key, value in zip(keys, found, strict=True) if value is not None]
        taken = _take(client, wanted) if wanted else set()
    except result_store.ERRORS as exc:
        # Redis is away: its cancels cannot be read. The images run; their results wait for
        # Redis anyway.
        log.warning("cannot read the cancels of %d image(s) (%s): running them", len(keys), exc)
        taken = set()
    now = time.time() if now is None else now
    ended: dict[str, ClassifyError] = {}
    for image, key in zip(images, keys, strict=True):
        if key in taken:
            ended[image.id] = cancelled()
        elif (error := expired(image.deadline, now)) is not None:
            ended[image.id] = error
    return ended


def _write_and_look(
    task: Task, images: Sequence[Any], keys: list[str], own: Started | None
) -> list[Any]:
    """Each image's STARTED by `SET NX` (and `own`, the message's), then the cancel keys:
    their values."""
    backend, client = task.app.backend, task.app.backend.client
    hostname = task.request.hostname
    pipe = client.pipeline(transaction=False)
    for started in [backend.started(i.id, hostname) for i in images] + ([own] if own else []):
        pipe.set(started.key, started.value, nx=True, ex=started.ttl or None)
    if is_cluster_client(client):
        pipe.execute(raise_on_error=False)  # written before the cancels are looked at
        return list(mget(client, keys))
    pipe.mget(keys)
    found = pipe.execute(raise_on_error=False)[-1]
    if isinstance(found, Exception):
        raise found
    return list(found)


def _take(client: Any, keys: list[str]) -> set[str]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, CANCEL_TAKEN, xx=True, get=True, keepttl=True)
    replies = pipe.execute()
    return {key for key, old in zip(keys, replies, strict=True) if old is not None}


def end_images(task: Task, ended: dict[str, ClassifyError], key_prefix: str) -> None:
    """Store the ended images' REVOKED states in one call and drop their taken cancel keys
    (the task logs and counts each as a job)."""
    if not ended:
        return
    task.app.backend.store_many([(i, error, REVOKED) for i, error in ended.items()])
    release(task.app.backend.client, [i for i, e in ended.items() if isinstance(e, Cancelled)],
            key_prefix)  # fmt: skip
