"""The result cache: the same image bytes through the same model setup give the same answer.

Keyed by a sha256 over the image bytes and everything that shapes the predictions (model,
its version, weights, labels, preprocessing, precision, draft decoding, top_k), stored in the
result store (RESULT_URL, default REDIS_URL; one key per entry, so a Redis Cluster spreads them
over its masters) for RESULT_CACHE_TTL seconds. A hit skips decode, preprocess and inference;
the result says `"cached": true` and carries this job's own source and timings. The cache is
best-effort: when Redis misbehaves the job simply runs the model. The stand-in model
(MODEL=sleep:...) is never cached, since it exists to measure the queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from core.connections import mget
from core.keys import RESULT_CACHE_KEY_PREFIX
from worker import result_store
from worker.settings import Settings

log = logging.getLogger(__name__)


KEY_PREFIX = RESULT_CACHE_KEY_PREFIX  # core.keys names it
# Parts of a result that describe this job rather than the image and the model.
_PER_JOB = ("source", "timings_ms", "cached", "batch_size")


def connect(settings: Settings) -> redis.Redis | None:
    """A client of the result store for the cache (a `RedisCluster` on a cluster), or None
    when it cannot be reached now: the cache is best-effort and must not stop a worker."""
    try:
        client: redis.Redis = settings.result_config.client(
            socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
        )
    except result_store.ERRORS as exc:
        log.warning("result cache off in this process: the result store is away (%s)", exc)
        return None
    return client


def enabled(settings: Settings) -> bool:
    return (
        settings.result_cache
        and settings.result_cache_ttl > 0
        and not settings.model.startswith("sleep:")
    )


# Bump when decoding or preprocessing changes what a given image gives.
PIPELINE_VERSION = 2


def cache_key(data: bytes, top_k: int, model: dict[str, Any], settings: Settings) -> str:
    """Everything that can change a job's outcome: the model setup, and the settings that
    decide whether an image is refused at all (a stricter worker must not be served a result
    a laxer one stored)."""
    identity = {
        "pipeline": PIPELINE_VERSION,
        "model": model.get("model"),
        "arch": model.get("arch"),
        "version": model.get("version"),
        "weights": model.get("weights"),
        "labels": model.get("labels"),
        "preprocess": model.get("preprocess"),
        "precision": model.get("precision"),
        # Not the device: the same precision gives the same answer on CPU and GPU; but the
        # decoder (nvJPEG on a GPU) changes pixels, as draft decoding does.
        "decoder": _decoder(model, settings),
        "draft_decode": settings.draft_decode,
        "allowed_formats": sorted(settings.allowed_formats),
        "max_image_pixels": settings.max_image_pixels,
        "max_image_bytes": settings.max_image_bytes,
        "top_k": top_k,
    }
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    h.update(b"\0")
    h.update(data)
    return settings.redis_key_prefix + KEY_PREFIX + h.hexdigest()


def _decoder(model: dict[str, Any], settings: Settings) -> str:
    on_gpu = str(model.get("device", "")).startswith("cuda")
    return "nvjpeg" if on_gpu and settings.gpu_decode else "pillow"


@dataclass
class Entry:
    """One lookup: the stored result (None on a miss) and where to store a fresh one."""

    key: str | None
    stored: dict[str, Any] | None
    settings: Settings
    lookup_seconds: float = 0.0
    client: redis.Redis | None = None
    # A bulk message's entries write into one list, stored in one round trip (`store_all`).
    sink: list[tuple[str, str]] | None = None

    def reuse(self, source: str, fetch_seconds: float, started: float) -> dict[str, Any]:
        """The stored result as this job's: its source, its timings, marked as cached."""
        assert self.stored is not None
        result = {k: v for k, v in self.stored.items() if k not in _PER_JOB}
        result["source"] = source
        result["cached"] = True
        result["timings_ms"] = {
            "fetch": round(fetch_seconds * 1000.0, 3),
            "cache": round(self.lookup_seconds * 1000.0, 3),
            "total": round((time.perf_counter() - started) * 1000.0, 3),
        }
        return result

    def store(self, result: dict[str, Any]) -> dict[str, Any]:
        """Remember a fresh result (best-effort) and return it marked as not cached."""
        result["cached"] = False
        if self.key is None or self.client is None:
            return result
        body = {k: v for k, v in result.items() if k not in _PER_JOB}
        if self.sink is not None:
            self.sink.append((self.key, json.dumps(body)))
            return result
        try:
            self.client.set(self.key, json.dumps(body), ex=self.settings.result_cache_ttl)
        except result_store.ERRORS as exc:
            log.warning("result cache: cannot store (%s); results are unaffected", exc)
        return result


def lookup(
    client: redis.Redis | None,
    data: bytes,
    top_k: int,
    model: dict[str, Any],
    settings: Settings,
) -> Entry:
    """`client`: the process's (Runtime.cache_client); None when the cache is off."""
    entry = unlooked(client, data, top_k, model, settings)
    look_up([entry], [top_k], model)
    return entry


def unlooked(
    client: redis.Redis | None,
    data: bytes,
    top_k: int,
    model: dict[str, Any],
    settings: Settings,
    sink: list[tuple[str, str]] | None = None,
) -> Entry:
    """The image's entry, not yet looked up (see `look_up`)."""
    if client is None or not enabled(settings):
        return Entry(None, None, settings)
    return Entry(cache_key(data, top_k, model, settings), None, settings, client=client, sink=sink)


def look_up(entries: list[Entry], top_ks: list[int], model: dict[str, Any]) -> None:
    """Fill in what the cache holds for these entries, in one round trip (MGET)."""
    wanted = [e for e in entries if e.key is not None and e.client is not None]
    if not wanted:
        return
    started = time.perf_counter()
    try:
        raws = mget(wanted[0].client, [str(e.key) for e in wanted])
    except result_store.ERRORS as exc:
        log.warning("result cache: lookup failed (%s); running the model", exc)
        raws = [None] * len(wanted)
    took = time.perf_counter() - started
    k_of = {id(e): k for e, k in zip(entries, top_ks, strict=True)}
    for entry, raw in zip(wanted, raws, strict=True):
        entry.lookup_seconds = took
        try:
            stored = json.loads(raw) if raw else None
        except ValueError:
            stored = None
        if stored is not None and not _plausible(stored, k_of[id(entry)], model):
            log.warning("result cache: ignoring a malformed entry %s", str(entry.key)[-12:])
            stored = None
        entry.stored = stored


def store_all(client: redis.Redis | None, sink: list[tuple[str, str]], settings: Settings) -> None:
    """The entries a bulk message's images wrote into `sink`, in one round trip."""
    if client is None or not sink:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for key, body in sink:
            pipe.set(key, body, ex=settings.result_cache_ttl)
        pipe.execute()
    except result_store.ERRORS as exc:
        log.warning("result cache: cannot store (%s); results are unaffected", exc)


def _plausible(stored: Any, top_k: int, model: dict[str, Any]) -> bool:
    """What this worker would have stored: its model, top_k well-formed predictions."""
    if not isinstance(stored, dict):
        return False
    if any(stored.get(k) != model.get(k) for k in ("model", "weights", "precision")):
        return False
    predictions = stored.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != top_k:
        return False
    return all(
        isinstance(p, dict)
        and isinstance(p.get("index"), int)
        and isinstance(p.get("label"), str)
        and isinstance(p.get("probability"), int | float)
        and 0.0 <= p["probability"] <= 1.0
        for p in predictions
    )
