"""The command-line client, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.paths import ROOT


def imgqueue(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI (`python -m producer ARGS`) against `redis_url`, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
