"""The ops building blocks as plain functions: cache keys, redaction, readiness file, settings."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from producer.redaction import display_url
from tests.support import ROOT
from worker import cache, health
from worker.errors import ConfigError
from worker.ops import PER_TASK_LOGGERS, RedactingFilter, configure_logging
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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:pw@host/a.jpg?sig=s3cr3t&x=1", "https://host/a.jpg?REDACTED"),
        ("http://host:8080/a.jpg", "http://host:8080/a.jpg"),
        ("https://token@host/a.jpg#frag", "https://host/a.jpg"),
        ("redis://:hunter2@redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert display_url(url) == expected


def test_redacting_filter_covers_any_log_line() -> None:
    record = logging.LogRecord(
        "celery.app.trace", logging.INFO, __file__, 1, "Task %s raised: %r", None, None
    )
    record.args = ("x", "FetchFailed('https://a:b@h/x.jpg?t=1' answered HTTP 500)")
    assert RedactingFilter().filter(record)
    message = record.getMessage()
    assert "a:b@" not in message and "t=1" not in message and "https://h/x.jpg" in message


def test_ready_file_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "run" / "worker.ready"
    health.mark_ready(path, {"model": "resnet50", "weights": "random:0"})
    ok, why = health.check_file(path)
    assert ok and "resnet50" in why
    assert json.loads(path.read_text())["pid"] == os.getpid()
    health.mark_stopped(path)
    assert not path.exists()
    assert health.check_file(path)[0] is False
    path.write_text("{not json")
    assert health.check_file(path)[0] is False


@pytest.mark.parametrize(
    ("setting", "cli_level", "level", "per_task"),
    [
        ("", logging.INFO, logging.INFO, logging.WARNING),  # Celery's -l stays
        ("WARNING", logging.INFO, logging.WARNING, logging.WARNING),  # LOG_LEVEL wins
        ("DEBUG", logging.INFO, logging.DEBUG, logging.NOTSET),  # Celery's own lines return
    ],
)
def test_log_level_setting(setting: str, cli_level: int, level: int, per_task: int) -> None:
    logger = logging.getLogger("imgqueue-test-root")
    logger.setLevel(cli_level)
    saved = {name: logging.getLogger(name).level for name in PER_TASK_LOGGERS}
    try:
        configure_logging(Settings(log_level=setting), logger)
        assert logger.level == level
        assert all(logging.getLogger(n).level == per_task for n in PER_TASK_LOGGERS)
    finally:
        for name, value in saved.items():
            logging.getLogger(name).setLevel(value)


def test_log_level_is_validated() -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        Settings.from_env({"LOG_LEVEL": "chatty"})
    assert Settings.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


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


def test_a_forged_cache_entry_is_ignored(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, model="resnet50")
    model = {"model": "resnet50", "weights": "w", "preprocess": "p", "precision": "fp32"}
    key = cache.cache_key(b"forged", 2, model, settings)
    r = redis.Redis.from_url(redis_url)
    client = settings.redis_config.client()
    good = {**model, "predictions": [{"index": 1, "label": "a", "probability": 0.5}] * 2}
    try:
        for forged in (
            {**good, "weights": "someone else's"},
            {**good, "predictions": [{"index": 1, "label": "a", "probability": 7}] * 2},
            {**good, "predictions": "<script>"},
            ["not", "a", "result"],
        ):
            r.set(key, json.dumps(forged))
            assert cache.lookup(client, b"forged", 2, model, settings).stored is None
        r.set(key, json.dumps(good))
        assert cache.lookup(client, b"forged", 2, model, settings).stored == good
    finally:
        r.delete(key)
        r.close()
        client.close()


def test_the_health_check_is_cheap_quiet_and_imports_no_torch_or_celery(tmp_path: Path) -> None:
    """The Docker HEALTHCHECK runs `python -m worker.health` every 15 s, forever."""
    ready = tmp_path / "ready.json"
    ready.write_text(json.dumps({"pid": os.getpid(), "model": "resnet50", "weights": "w"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "READY_FILE": str(ready)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        [sys.executable, "-m", "worker.health"], env=env, capture_output=True, text=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert run.returncode == 0 and "ready: pid" in run.stdout
    assert run.stderr == ""  # no RuntimeWarning, nothing
    assert cpu < 0.3, f"{cpu:.2f}s of CPU"
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker.health"],
        env=env,
        capture_output=True,
        text=True,
    )
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in traced.stderr.splitlines()
    }
    assert not imported & {"torch", "torchvision", "celery", "kombu", "PIL", "numpy"}
