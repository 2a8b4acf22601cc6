"""The command-line client, run as a user runs it (a process) or in the test's own process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


def run_cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (as `imgqueue --redis-url URL ARGS`): exit status, out, err."""
    from cli.main import main

    try:
        code = main(["--redis-url", url, *args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
