"""One job, start to finish, as plain functions: fetch, decode, preprocess, infer, postprocess."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from core.contract import DEFAULT_TOP_K, TASK_KWARGS, ArgumentError, check_source, check_top_k
from core.redaction import display_url
from worker import cache
from worker.batcher import GpuDecodeFailed, InferenceDead
from worker.errors import ClassifyError, InferenceUnavailable, InvalidArguments
from worker.fetch import Fetched, fetch
from worker.imaging import Cropped, Decoded, decode, probe
from worker.runtime import Runtime

if TYPE_CHECKING:  # the stand-in model's "tensors" are placeholders: it never loads torch
    from torch import Tensor


def validate_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, int]:
    """The contract's `[source]` and `top_k`, or InvalidArguments saying what is wrong."""
    unknown = sorted(set(kwargs) - TASK_KWARGS)
    if unknown:
        raise InvalidArguments(f"unknown keyword argument(s): {', '.join(unknown)}")
    if len(args) != 1:
        raise InvalidArguments(
            f"expected exactly one positional argument (source), got {len(args)}"
        )
    try:
        return check_source(args[0]), check_top_k(kwargs.get("top_k", DEFAULT_TOP_K))
    except ArgumentError as exc:
        raise InvalidArguments(str(exc)) from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _wait(rt: Runtime, future: Future[tuple[Tensor, int]]) -> tuple[Tensor, int]:
    """The job's row of its batch; InferenceUnavailable when the inference thread is gone."""
    timeout = rt.settings.inference_timeout
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        # Hung, not dead: no thread can be killed, so the process gives up on its model.
        rt.batcher.declare_dead(TimeoutError(f"no batch finished within {timeout:g}s"))
        raise InferenceUnavailable(
            f"inference did not answer within INFERENCE_TIMEOUT={timeout:g}s"
        ) from None
    except InferenceDead as exc:
        raise InferenceUnavailable(str(exc)) from None


@dataclass
class Job:
    """What a job carries from stage to stage: its source as results show it, top_k, the
    model's description, its cache entry, and when it started (t0) and was fetched (t1)."""

    shown: str
    top_k: int
    description: dict[str, Any]
    entry: cache.Entry
    t0: float
    t1: float


@dataclass
class Prepared(Job):
    """A job fetched and not found in the cache: its bytes wait to be decoded."""

    fetched: Fetched


@dataclass
class Submitted(Job):
    """A job whose input waits in the batcher: what `finish` needs to make its result."""

    decoded: Decoded | Cropped
    future: Future[tuple[Tensor, int]]
    t2: float
    encoded: bytes | None = None  # submitted as JPEG bytes: kept for a Pillow fallback
    deadline: float | None = None  # monotonic: its batch waits for partners no longer


def prepare(
    source: str,
    top_k: int,
    rt: Runtime,
    sink: list[tuple[str, str]] | None = None,
    task_id: str = "",
) -> dict[str, Any] | Prepared:
    """Fetch and look up the cache: a cached result at once, or the fetched job. Raises a
    ClassifyError subclass for bad input. The caller releases `.fetched` once decoded.
    `task_id`: the job's (an `upload:` source must name it).

    With a `sink` (a bulk message's), the cache is neither read nor written here: the caller
    looks a chunk up at once (`cache.look_up`) and stores the sink in one round trip.
    """
    settings, model = rt.settings, rt.classifier
    shown = display_url(source, limit=None)  # results never carry credentials or a query
    t0 = time.perf_counter()
    fetched = fetch(source, settings, task_id=task_id, uploads=rt.uploads)
    t1 = time.perf_counter()
    try:
        description = model.describe()
        if sink is not None:
            entry = cache.unlooked(
                rt.cache_client, fetched.data, top_k, description, settings, sink
            )
        else:
            entry = cache.lookup(rt.cache_client, fetched.data, top_k, description, settings)
    except BaseException:
        fetched.release()
        raise
    if entry.stored is not None:
        fetched.release()
        return entry.reuse(shown, t1 - t0, t0)
    return Prepared(shown, top_k, description, entry, t0, t1, fetched=fetched)


def submit_decoded(
    job: Prepared,
    decoded: Decoded | Cropped,
    item: Tensor | bytes,
    rt: Runtime,
    deadline: float | None = None,
) -> Submitted:
    """Hand a preprocessed input (or JPEG bytes, to decode on the GPU) to the batcher;
    `deadline` (monotonic): the job's, which its batch does not wait past."""
    t2 = time.perf_counter()
    future = _hand_over(rt, item, deadline)
    encoded = item if isinstance(item, bytes) else None  # kept for a Pillow fallback
    carried = {f.name: getattr(job, f.name) for f in fields(Job)}
    return Submitted(
        **carried, decoded=decoded, future=future, t2=t2, encoded=encoded, deadline=deadline
    )


def submit(
    source: str, top_k: int, rt: Runtime, deadline: float | None = None, task_id: str = ""
) -> dict[str, Any] | Submitted:
    """Fetch, look up the cache, decode and hand the input to the batcher: a cached result
    at once, or a Submitted job. Raises a ClassifyError subclass for bad input. Call inside
    `rt.batcher.upcoming()`."""
    job = prepare(source, top_k, rt, task_id=task_id)
    if isinstance(job, dict):
        return job
    with _decoding(rt):
        try:
            if rt.batcher.accepts_encoded:
                probed = _probe(job.fetched, rt)
                if probed is not None and probed.format == "JPEG":
                    # Decoded with its batch on the GPU by the inference thread.
                    return submit_decoded(job, probed, job.fetched.data, rt, deadline)
            decoded, tensor = _on_cpu(job.fetched, rt)
        finally:
            job.fetched.release()
        return submit_decoded(job, decoded, tensor, rt, deadline)


def _hand_over(
    rt: Runtime, item: Tensor | bytes, deadline: float | None = None
) -> Future[tuple[Tensor, int]]:
    """To the batcher (bytes: JPEG, to decode on the GPU); InferenceUnavailable when its
    inference thread is gone, so the job retries on another worker."""
    try:
        if isinstance(item, bytes):
            return rt.batcher.submit_encoded(item, deadline)
        return rt.batcher.submit(item, deadline)
    except InferenceDead as exc:
        raise InferenceUnavailable(str(exc)) from None


def _probe(fetched: Fetched, rt: Runtime) -> Decoded | None:
    """The header checks, in a decode process: parsing it is where files attack."""
    settings, pool = rt.settings, rt.decoder
    max_pixels, formats = settings.max_image_pixels, settings.allowed_formats
    return (pool.probe if pool else probe)(
        fetched.data, max_pixels=max_pixels, allowed_formats=formats
    )


def _on_cpu(source: Fetched | bytes, rt: Runtime) -> tuple[Decoded | Cropped, Tensor]:
    """Pillow, in a decode process (DECODE_SANDBOX) or here: every image on the CPU, and on
    CUDA what the GPU does not decode (not a JPEG, or GpuDecodeFailed)."""
    settings, model, pool = rt.settings, rt.classifier, rt.decoder
    draft = _draft_size(rt)
    max_pixels, formats = settings.max_image_pixels, settings.allowed_formats
    if pool is not None:
        resize, crop = model.shrink_size, model.crop_size
        if resize and crop:  # the decode process cuts the model's input: only that crosses
            cut = pool.decode_cropped(
                source,
                max_pixels=max_pixels,
                allowed_formats=formats,
                draft_size=draft,
                resize=resize,
                crop=crop,
            )
            if isinstance(cut, Cropped):
                return cut, model.preprocess_cropped(cut)
            return cut, model.preprocess(cut.image)
        decoded = pool.decode(
            source, max_pixels=max_pixels, allowed_formats=formats, draft_size=draft, resize=resize
        )
    else:
        data = source.data if isinstance(source, Fetched) else source
        decoded = decode(data, max_pixels=max_pixels, allowed_formats=formats, draft_size=draft)
    return decoded, model.preprocess(decoded.image)


def decode_chunk(sources: list[Fetched], rt: Runtime) -> list[Decoded | ClassifyError]:
    """Several images through one decode process in one round trip (bulk messages; needs
    DECODE_SANDBOX): each decoded, or its own error."""
    settings, model, pool = rt.settings, rt.classifier, rt.decoder
    assert pool is not None
    with _decoding(rt):
        return pool.decode_many(
            sources,
            max_pixels=settings.max_image_pixels,
            allowed_formats=settings.allowed_formats,
            draft_size=_draft_size(rt),
            resize=model.shrink_size,
        )


def _decoding(rt: Runtime) -> contextlib.AbstractContextManager[None]:
    """On the CPU, a batch being formed waits for a job while it decodes (worker/gap.py)."""
    gap = rt.batcher.gap
    return gap.decoding_one() if gap else contextlib.nullcontext()


def _draft_size(rt: Runtime) -> int | None:
    return rt.classifier.resize_size if rt.settings.draft_decode else None


def finish(job: Submitted, rt: Runtime) -> dict[str, Any]:
    """Wait for the job's batch and build its result (stored in the cache)."""
    try:
        probabilities, batch_size = _wait(rt, job.future)
    except GpuDecodeFailed:
        assert job.encoded is not None
        job.decoded, tensor = _on_cpu(job.encoded, rt)
        probabilities, batch_size = _wait(rt, _hand_over(rt, tensor, job.deadline))
    finally:
        job.encoded = None
    t3 = time.perf_counter()
    predictions = rt.classifier.postprocess(probabilities, job.top_k)
    t4 = time.perf_counter()
    decoded = job.decoded
    result: dict[str, Any] = {
        "source": job.shown,
        **job.description,
        "predictions": [p.to_dict() for p in predictions],
        "image": {"width": decoded.width, "height": decoded.height, "format": decoded.format},
        "batch_size": batch_size,
        "timings_ms": {
            "fetch": _ms(job.t1 - job.t0),
            "preprocess": _ms(job.t2 - job.t1),
            "inference": _ms(t3 - job.t2),
            "postprocess": _ms(t4 - t3),
            "total": _ms(t4 - job.t0),
        },
    }
    return job.entry.store(result)


def classify(
    source: str, top_k: int, rt: Runtime, deadline: float | None = None, task_id: str = ""
) -> dict[str, Any]:
    """Classify one source; raises a ClassifyError subclass for bad input. `deadline`
    (monotonic): the job's, which its batch does not wait past; `task_id`: the job's."""
    rt.enter_task_thread()
    with rt.batcher.upcoming():
        job = submit(source, top_k, rt, deadline, task_id)
    # Waited for outside `upcoming`: a job waiting for its own batch is not on its way, and
    # counting it made every lone job wait out MAX_BATCH_DELAY_MS for partners.
    return job if isinstance(job, dict) else finish(job, rt)
