"""The Docker HEALTHCHECK as Docker runs it (`python -m worker.health`, a process): cheap, quiet,
and loading neither torch nor Celery."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


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
