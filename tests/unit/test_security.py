"""Security settings without a worker: the worker's Celery app accepts JSON only."""

from __future__ import annotations

from worker.celery_app import create_app
from worker.settings import Settings


def test_worker_accepts_json_only() -> None:
    conf = create_app(Settings()).conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
