"""Worker side of imgqueue: `celery -A worker worker` finds the app as `worker.app`."""

from worker.celery_app import app

__all__ = ["app"]
