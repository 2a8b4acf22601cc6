"""Readiness: true only once the model is loaded and warmed up.

A worker reports it two ways: `/ready` on the metrics port, and READY_FILE (JSON with its pid),
written after warm-up and removed at start and shutdown. `python -m worker.health` checks either
and exits 0 when ready, 1 when not, 2 when neither is configured; containers use it as HEALTHCHECK.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.settings import Settings


def mark_loading(ready_file: Path | None) -> None:
    """At start: whatever a previous run left behind says nothing about this one."""
    if ready_file is not None:
        with contextlib.suppress(FileNotFoundError):
            ready_file.unlink()


def mark_ready(ready_file: Path | None, info: dict[str, Any]) -> None:
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "since": time.time(), **info}))
        tmp.replace(ready_file)  # atomic: a checker never reads half a file


def mark_stopped(ready_file: Path | None) -> None:
    mark_loading(ready_file)


def check_file(path: Path) -> tuple[bool, str]:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return False, f"{path} does not exist: the model is not loaded yet (or the worker stopped)"
    except (OSError, ValueError) as exc:
        return False, f"{path} is unreadable: {exc}"
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"{path} names pid {pid}, which is not running (stale file)"
    except PermissionError:
        pass  # it exists, under another user
    return True, f"ready: pid {pid}, model {info.get('model')} weights {info.get('weights')}"


def check_url(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200, f"{url} answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except OSError as exc:
        return False, f"{url} unreachable: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.health", description=__doc__)
    parser.add_argument("--file", type=Path, default=None, help="ready file (default $READY_FILE)")
    parser.add_argument("--url", default=None, help="readiness URL (default from $METRICS_PORT)")
    ns = parser.parse_args(argv)
    settings = Settings.from_env()
    ready_file = ns.file or settings.ready_file
    url = ns.url
    if url is None and ready_file is None and settings.metrics_port:
        url = f"http://127.0.0.1:{settings.metrics_port}/ready"
    if ready_file is not None:
        ok, why = check_file(ready_file)
    elif url is not None:
        ok, why = check_url(url)
    else:
        print("not configured: set READY_FILE or METRICS_PORT (or pass --file/--url)")
        return 2
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
