"""Worker side of imgqueue: `celery -A worker worker` finds the app as `worker.app`."""

import os

# OpenMP reads this once, when torch loads it, so it is set before anything imports torch.
# Idle OpenMP threads then sleep instead of spinning on the cores that task threads need for
# decoding the next batch: int8, 1024x768, one worker on 2 cores measured 38 -> 30 ms of CPU
# per job and 48 -> 56 img/s (docs/performance.md). Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from worker.celery_app import app

__all__ = ["app"]
