"""Bulk messages: many images in one message, each with its own task id, result and state.

A bulk message costs Celery and Redis one delivery, one ack and one start for all its images;
each image then goes through the same steps as a `classify` job (worker/pipeline.py) and its
result is stored under its own id, exactly as `classify` would store it. Plain functions: the
task (worker/tasks.py) does the Celery parts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.connections import mget
from core.contract import (
    DEFAULT_TOP_K,
    MAX_BULK_IMAGES,
    TASK_KWARGS,
    ArgumentError,
    check_source,
    check_top_k,
    result_key,
)
from core.states import FINAL_STATES, state_of
from worker import events, result_store
from worker.cancels import monotonic, parse_deadline
from worker.errors import ClassifyError, InternalError, InvalidArguments

if TYPE_CHECKING:  # both import torch; `run` imports them when called
    from worker.pipeline import Prepared, Submitted
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

MAX_ID_CHARS = 255
# Reading which images are done can fail while the result store is away.
_UNREADABLE: tuple[type[Exception], ...] = (*result_store.ERRORS, OSError)


@dataclass
class Image:
    """One image of a bulk message."""

    id: str
    source: str
    top_k: int
    # Epoch seconds: not started by then, it ends REVOKED (Expired). A retry or a split is of
    # a started image, so `to_dict` leaves it out.
    deadline: float | None = None
    # Its entry's group, webhook and tenant (core.lifecycle), kept by a retry (worker/events.py).
    group: str = ""
    webhook: str = ""
    tenant: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "source": self.source, "top_k": self.top_k}
        return {**out, **events.entry_fields(self.group, self.webhook, self.tenant)}


@dataclass
class Outcome:
    """What became of a bulk message's images."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> result
    failures: dict[str, ClassifyError] = field(default_factory=dict)  # id -> final error
    transient: dict[str, ClassifyError] = field(default_factory=dict)  # id -> retryable error
    invalid: int = 0  # items without a usable id: nothing can be stored for them
    revoked: int = 0  # cancelled or expired before they started (worker/cancels.py)

    def summary(self, skipped: int) -> dict[str, int]:
        return {
            "succeeded": len(self.results),
            "failed": len(self.failures),
            "retrying": len(self.transient),
            "skipped": skipped,
            "invalid": self.invalid,
            "revoked": self.revoked,
        }


def parse(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Image], Outcome]:
    """The message's images, and an Outcome holding the items that fail validation alone.

    Raises InvalidArguments when the message as a whole is outside the contract.
    """
    unknown = sorted(set(kwargs) - TASK_KWARGS)
    if unknown:
        raise InvalidArguments(f"unknown keyword argument(s): {', '.join(unknown)}")
    if len(args) != 1 or not isinstance(args[0], list):
        raise InvalidArguments("expected one positional argument: a list of images")
    items = args[0]
    if not 1 <= len(items) <= MAX_BULK_IMAGES:
        raise InvalidArguments(f"a bulk message holds 1..{MAX_BULK_IMAGES} images")
    try:
        default_k = check_top_k(kwargs.get("top_k", DEFAULT_TOP_K))
    except ArgumentError as exc:
        raise InvalidArguments(str(exc)) from None
    images: list[Image] = []
    outcome = Outcome()
    seen: set[str] = set()
    for item in items:
        task_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(task_id, str) or not _valid_id(task_id) or task_id in seen:
            outcome.invalid += 1
            continue
        seen.add(task_id)
        try:
            images.append(_image(task_id, item, default_k))
        except InvalidArguments as exc:
            outcome.failures[task_id] = exc
    return images, outcome


def ids_in(args: tuple[Any, ...]) -> list[str]:
    """The usable image ids of a message that failed validation as a whole (best effort)."""
    items = args[0] if len(args) == 1 and isinstance(args[0], list) else []
    ids = [i.get("id") for i in items[:MAX_BULK_IMAGES] if isinstance(i, dict)]
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and _valid_id(i)))


def _valid_id(task_id: str) -> bool:
    return 0 < len(task_id) <= MAX_ID_CHARS and task_id.isprintable()


def _image(task_id: str, item: dict[str, Any], default_k: int) -> Image:
    unknown = sorted(set(item) - {"id", "source", "top_k", "deadline", *events.ENTRY_KEYS})
    if unknown:
        raise InvalidArguments(f"unknown image field(s): {', '.join(unknown)}")
    try:
        source = check_source(item.get("source"))
        top_k = check_top_k(item.get("top_k", default_k))
    except ArgumentError as exc:
        raise InvalidArguments(str(exc)) from None
    deadline = parse_deadline(item.get("deadline"), "deadline")
    group, webhook, tenant = events.entry_origin(item)
    return Image(task_id, source, top_k, deadline, group=group, webhook=webhook, tenant=tenant)


def finished_ids(client: Any, images: list[Image], key_prefix: str = "") -> set[str]:
    """Images that already have a final result (a redelivered message skips them); REVOKED
    is final too (cancelled or expired, worker/cancels.py)."""
    if not images:
        return set()
    try:
        # One MGET, or on a Redis Cluster one per slot (the keys spread over the masters).
        raws = mget(client, [result_key(i.id, key_prefix) for i in images])
    except _UNREADABLE as exc:
        # The result store is away (a restart, a cluster failover): skipping is only a saving,
        # so run them all; the store never replaces a final state (worker/backend.py).
        log.warning("cannot read which images are done (%s): running all %d", exc, len(images))
        return set()
    done = set()
    for image, raw in zip(images, raws, strict=True):
        if state_of(raw) in FINAL_STATES:
            done.add(image.id)
    return done


# Images decoded per round trip to a decode process, and the bytes they may hold at once.
DECODE_CHUNK = 16
DECODE_CHUNK_BYTES = 8 * 1024 * 1024


def run(images: list[Image], rt: Runtime, outcome: Outcome, started: dict[str, float]) -> None:
    """Classify the images: every input goes to the batcher before any result is awaited, so
    one message fills batches by itself. Fills `outcome`; `started` gets each image's start.

    The result cache costs Redis two round trips per bulk chunk, not two per image: a chunk
    is looked up with one MGET before it is decoded, and every fresh entry is stored at the
    end in one pipeline.
    """
    from worker import cache, pipeline  # imports torch

    rt.enter_task_thread()
    submitted: list[tuple[Image, pipeline.Submitted]] = []
    sink: list[tuple[str, str]] = []
    # Chunks through one decode process (one round trip each) where Pillow decodes on the
    # CPU; on CUDA JPEGs decode on the GPU, one by one as for single jobs.
    chunked = rt.decoder is not None and rt.classifier.device.type != "cuda"
    with rt.batcher.upcoming():
        chunk: list[tuple[Image, pipeline.Prepared]] = []
        held = 0
        for image in images:
            started[image.id] = time.perf_counter()
            job: dict[str, Any] | pipeline.Submitted | pipeline.Prepared
            try:
                if not chunked:
                    deadline = monotonic(image.deadline)
                    job = pipeline.submit(image.source, image.top_k, rt, deadline, image.id)
                else:
                    job = pipeline.prepare(image.source, image.top_k, rt, sink, image.id)
            except Exception as exc:
                _failed(outcome, image, _as_error(exc))
                continue
            if isinstance(job, dict):
                outcome.results[image.id] = job
            elif isinstance(job, pipeline.Submitted):
                submitted.append((image, job))
            else:
                chunk.append((image, job))
                held += len(job.fetched.data)
                if len(chunk) == DECODE_CHUNK or held >= DECODE_CHUNK_BYTES:
                    submitted += _decode_chunk(chunk, rt, outcome)
                    chunk, held = [], 0
        if chunk:
            submitted += _decode_chunk(chunk, rt, outcome)
    for image, done in submitted:
        try:
            outcome.results[image.id] = pipeline.finish(done, rt)
        except Exception as exc:
            _failed(outcome, image, _as_error(exc))
    cache.store_all(rt.cache_client, sink, rt.settings)


def _decode_chunk(
    chunk: list[tuple[Image, Prepared]], rt: Runtime, outcome: Outcome
) -> list[tuple[Image, Submitted]]:
    from worker import cache, pipeline

    model = rt.classifier
    cache.look_up([job.entry for _, job in chunk], [i.top_k for i, _ in chunk], model.describe())
    misses = []
    for image, job in chunk:
        if job.entry.stored is None:
            misses.append((image, job))
            continue
        job.fetched.release()
        outcome.results[image.id] = job.entry.reuse(job.shown, job.t1 - job.t0, job.t0)
    chunk = misses
    if not chunk:
        return []
    try:
        decoded = pipeline.decode_chunk([job.fetched for _, job in chunk], rt)
    finally:
        for _, job in chunk:
            job.fetched.release()
    out = []
    for (image, job), result in zip(chunk, decoded, strict=True):
        if isinstance(result, ClassifyError):
            _failed(outcome, image, result)
            continue
        try:
            tensor = model.preprocess(result.image)
            deadline = monotonic(image.deadline)
            out.append((image, pipeline.submit_decoded(job, result, tensor, rt, deadline)))
        except Exception as exc:
            _failed(outcome, image, _as_error(exc))
    return out


def _as_error(exc: Exception) -> ClassifyError:
    if isinstance(exc, ClassifyError):
        return exc
    return InternalError(f"{type(exc).__name__}: {exc}")


def _failed(outcome: Outcome, image: Image, exc: ClassifyError) -> None:
    if exc.transient:
        outcome.transient[image.id] = exc
    else:
        outcome.failures[image.id] = exc
