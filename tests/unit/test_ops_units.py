"""The ops building blocks as plain functions: redaction, readiness file, log settings (the
health check: tests/system/test_ops_health.py; the result cache: tests/unit/test_cache.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from core.redaction import display_url
from worker import health
from worker.errors import ConfigError
from worker.ops import PER_TASK_LOGGERS, RedactingFilter, configure_logging
from worker.settings import Settings


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
