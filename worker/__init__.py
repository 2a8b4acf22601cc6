"""Worker side of imgqueue: `celery -A worker worker` finds the app as `worker.app`."""

import os

# OpenMP (GNU libgomp, as in torch's wheels) reads these once, when torch loads it, so they are
# set before anything imports torch. An idle OpenMP thread spins ~300,000 times before it
# sleeps, on the cores the task threads need for decoding the next batch. 10,000 spins still
# bridge the gaps between the operators of one forward pass (batch-1 latency as with the
# default) but not the waits between batches: int8 1024x768, one worker on 2 cores, 48 -> 57
# img/s (docs/performance.md). Setting either variable yourself leaves both to you.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # `celery -A worker` reads `worker.app`; importing a light module (worker.imaging in a
    # decode process, say) must not build the Celery app or load torch.
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
