"""The result cache (worker/cache.py): what its key covers, turning it off, reusing an entry
for another source, and refusing a forged entry."""

from __future__ import annotations

import pytest

from worker import cache
from worker.errors import ConfigError
from worker.settings import Settings

MODEL = {"model": "resnet50", "weights": "IMAGENET1K_V2", "preprocess": "IMAGENET1K_V2"}


def key(
    data: bytes = b"img", top_k: int = 5, settings: Settings | None = None, **model: str
) -> str:
    return cache.cache_key(
        data, top_k, {**MODEL, "precision": "fp32", **model}, settings or Settings()
    )


def test_cache_key_covers_bytes_model_and_top_k() -> None:
    base = key()
    assert base == key() and base.startswith(cache.KEY_PREFIX)
    variants = [
        key(data=b"img2"),
        key(top_k=6),
        key(weights="IMAGENET1K_V1"),
        key(preprocess="IMAGENET1K_V1"),
        key(precision="bf16"),
        key(model="other"),
        key(settings=Settings(draft_decode=not Settings().draft_decode)),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # Device and source are not part of it: same bytes from a URL or a file, CPU or GPU
    # (unless the GPU decodes the JPEG itself).
    assert key(device="cuda:0", settings=Settings(gpu_decode=False)) == base


def test_cache_can_be_turned_off() -> None:
    assert cache.enabled(Settings())
    assert not cache.enabled(Settings.from_env({"RESULT_CACHE": "false"}))
    assert not cache.enabled(Settings.from_env({"RESULT_CACHE_TTL": "0"}))
    assert not cache.enabled(Settings(model="sleep:5ms"))  # the stand-in measures the queue
    with pytest.raises(ConfigError):
        Settings.from_env({"RESULT_CACHE_TTL": "-1"})
    with pytest.raises(ConfigError):
        Settings.from_env({"METRICS_PORT": "70000"})


def test_cache_reuse_keeps_this_jobs_source() -> None:
    stored = {"model": "resnet50", "predictions": [1], "source": "a.jpg", "batch_size": 8}
    entry = cache.Entry("k", stored, Settings(), lookup_seconds=0.0002)
    result = entry.reuse("https://b/x.jpg", fetch_seconds=0.003, started=0.0)
    assert result["source"] == "https://b/x.jpg" and result["cached"] is True
    assert result["predictions"] == [1] and "batch_size" not in result
    assert result["timings_ms"]["fetch"] == 3.0 and result["timings_ms"]["cache"] == 0.2


def test_cache_key_covers_every_setting_that_changes_an_outcome() -> None:
    model = {"model": "resnet50", "weights": "w", "preprocess": "p", "precision": "fp32"}
    base = cache.cache_key(b"img", 5, model, Settings())
    for changed in (
        Settings(allowed_formats=("JPEG",)),
        Settings(max_image_pixels=1000),
        Settings(max_image_bytes=1000),
        Settings(draft_decode=False),
        Settings(redis_key_prefix="t1:"),
    ):
        assert cache.cache_key(b"img", 5, model, changed) != base
    on_gpu = {**model, "device": "cuda:0"}
    assert cache.cache_key(b"img", 5, on_gpu, Settings()) != base  # nvJPEG decodes there
    assert cache.cache_key(b"img", 5, on_gpu, Settings(gpu_decode=False)) == base
    assert cache.cache_key(b"img", 5, model, Settings(gpu_decode=False)) == base
