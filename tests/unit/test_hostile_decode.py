"""Bounded cost per image, in-process: the decode sandbox (worker/sandbox) kills a decode past
its deadline or crash and recovers, and a chunk of images costs only its culprit
(tests/system/test_hostile_decode.py sends the crafted corpus through a real worker)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.support import corpus
from tests.support.paths import SAMPLES
from worker.errors import DecodeTimeout, NotAnImage
from worker.fetch import Fetched
from worker.sandbox.pool import DecodePool, Limits
from worker.settings import DEFAULT_FORMATS

MIB = 1024 * 1024


# -- the pool in-process --------------------------------------------------------------------


def test_a_deadline_and_a_crash_cost_one_job_and_the_pool_recovers() -> None:
    pool = DecodePool(Limits(1, 0, timeout=0.3, seconds_per_megapixel=0.0))
    cat = (SAMPLES / "cat.jpg").read_bytes()
    kwargs = {"max_pixels": 64_000_000, "allowed_formats": DEFAULT_FORMATS, "draft_size": None}
    try:
        assert pool.decode(cat, resize=None, **kwargs).image.size == (451, 300)
        started = time.monotonic()
        with pytest.raises(DecodeTimeout):
            pool.decode(corpus.png_chunk_flood(8 * MIB), resize=None, **kwargs)
        assert time.monotonic() - started < 1.5
        assert pool.decode(cat, resize=232, **kwargs).image.size == (348, 232)

        def crash_soon() -> None:
            time.sleep(0.1)
            for pid in pool.pids():
                os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=crash_soon)
        killer.start()
        with pytest.raises((NotAnImage, DecodeTimeout)):
            pool.decode(corpus.tiff_strip_table(8 * MIB), resize=None, **kwargs)
        killer.join()
        assert pool.decode(cat, resize=None, **kwargs).width == 451  # a fresh child
    finally:
        pool.close()


def test_a_chunk_of_images_costs_only_its_culprit() -> None:
    """Bulk messages decode several images per round trip; a crafted one among them still
    fails alone (its deadline ends the child, the rest are decoded again one at a time)."""
    pool = DecodePool(Limits(1, 0, timeout=0.3, seconds_per_megapixel=0.0))
    cat = (SAMPLES / "cat.jpg").read_bytes()
    kwargs = {"max_pixels": 64_000_000, "allowed_formats": DEFAULT_FORMATS, "draft_size": None}

    def chunk(*datas: bytes) -> list[Fetched]:
        return [Fetched(d, "file", "x") for d in datas]

    try:
        fine = pool.decode_many(chunk(cat, b"not an image", cat), resize=232, **kwargs)
        assert [type(r).__name__ for r in fine] == ["Decoded", "NotAnImage", "Decoded"]
        assert fine[0].image.size == (348, 232)  # type: ignore[union-attr]
        before = set(pool.pids())
        flood = corpus.png_chunk_flood(8 * MIB)
        started = time.monotonic()
        mixed = pool.decode_many(chunk(cat, flood, cat), resize=None, **kwargs)
        assert [type(r).__name__ for r in mixed] == ["Decoded", "DecodeTimeout", "Decoded"]
        assert time.monotonic() - started < 3.0
        assert set(pool.pids()) != before  # the child that ran out of time was replaced
        assert pool.decode(cat, resize=None, **kwargs).width == 451
    finally:
        pool.close()
