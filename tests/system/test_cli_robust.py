"""The command line as a process (`python -m producer`) never shows a traceback: a server that is
not Redis is one line and exit 3, a closed pipe is a quiet exit 141."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from cli.exits import ExitStatus
from core.lifecycle import EVENTS_STREAM
from tests.support.cli_robust import (
    URL,
    not_redis_fixture,  # noqa: F401  (the fixture `not_redis`)
    r_fixture,  # noqa: F401  (the fixture `r`)
    url_fixture,  # noqa: F401  (the fixture `url`)
)
from tests.support.paths import ROOT

# -- a server that is not Redis: one line, exit 3, no traceback --------------------------------


def test_the_process_shows_no_traceback(not_redis: str) -> None:
    done = _imgqueue(not_redis, "status")
    assert done.returncode == ExitStatus.UNAVAILABLE
    assert done.stderr.startswith("error: cannot reach Redis at ")
    assert "Traceback" not in done.stderr
    assert "not a Redis server?" in done.stderr and len(done.stderr.splitlines()) == 1


# -- a closed pipe -----------------------------------------------------------------------------


def _imgqueue(url: str, *args: str, stdin: Any = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _read_one_line_then_close(url: str, *args: str, stdin: Any = None) -> tuple[int, str, str]:
    """As `imgqueue ARGS | head -1`: the exit status, the line read and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", *args],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        proc.stdout.close()  # more than a pipe's buffer is still to come: the next write fails
        code = proc.wait(timeout=60)
        err.seek(0)
        return code, first, err.read().decode()


def test_a_closed_pipe_ends_submit_quietly(url: str, tmp_path: Path) -> None:
    sources = tmp_path / "sources.txt"
    sources.write_text("".join(URL.format(i) + "\n" for i in range(5000)))  # 185 KB of ids
    with sources.open() as stdin:
        code, first, err = _read_one_line_then_close(url, "submit", "-", stdin=stdin)
    assert (code, err) == (ExitStatus.BROKEN_PIPE, "")
    assert re.fullmatch(r"[0-9a-f-]{36}\n", first)


def test_a_closed_pipe_ends_events_quietly(url: str, r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd(EVENTS_STREAM, {"kind": "job", "id": f"t{i}", "state": "SUCCESS"})
    pipe.execute()
    args = ("events", "--since", "0", "--timeout", "30")
    code, first, err = _read_one_line_then_close(url, *args)
    assert (code, err) == (ExitStatus.BROKEN_PIPE, "")
    assert json.loads(first)["id"] == "t0"
