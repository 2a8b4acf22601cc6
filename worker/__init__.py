"""Worker side of imgqueue. `celery -A worker worker` finds the app as `worker.app`, built from
the environment on that first access; importing any module under `worker` reads no
environment, connects no Celery signal and loads no torch (tests/system/test_app.py)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.celery_app import ImgqueueApp

__all__ = ["app", "create_app"]

_lock = threading.Lock()
_app: list[ImgqueueApp] = []


def __getattr__(name: str) -> Any:
    if name == "app":
        with _lock:
            if not _app:
                from worker.celery_app import create_app
                from worker.settings import Settings

                _app.append(create_app(Settings.from_env()))
            return _app[0]
    if name == "create_app":
        from worker.celery_app import create_app

        return create_app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
