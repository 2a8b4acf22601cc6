"""`imgqueue result ID...` (jobs by id) and `imgqueue results GROUP` (every job of a group,
exported; producer/groups.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
from typing import Any

from cli.exits import ExitStatus
from cli.submit import expand_sources, print_outcomes
from producer.client import Client
from producer.groups import wait_done


def cmd_result(client: Client, ns: argparse.Namespace) -> int:
    ids = list(expand_sources(ns.ids, sys.stdin))
    if ns.wait:
        return print_outcomes(client, ids, ns.timeout, ns.progress)
    any_failed = False
    for task_id in ids:
        outcome = client.status(task_id)
        print(json.dumps(outcome.to_dict(), sort_keys=True), flush=True)
        any_failed |= outcome.done and not outcome.ok
    return ExitStatus.JOB_FAILED if any_failed else ExitStatus.OK


def add_result(sub: Any) -> None:
    """`imgqueue result ID... [--wait]`."""
    r = sub.add_parser("result", help="print results (JSON lines) for task ids")
    r.add_argument("ids", nargs="+", help="task ids, or - for stdin")
    r.add_argument("--wait", action="store_true", help="wait until each job has ended")
    r.add_argument("--timeout", type=float, default=None, help="seconds to wait for all")
    r.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    r.set_defaults(func=cmd_result)


# An unknown group (UnknownGroup) is a usage error: cli/main.py's main() says so, exit 2.


def cmd_results(client: Client, ns: argparse.Namespace) -> int:
    out, target = sys.stdout, None
    if ns.out != "-":
        try:
            target = _Replacement(ns.out)
        except OSError as exc:  # no such directory, not writable: before asking Redis anything
            why = exc.strerror or exc
            print(f"error: cannot write --out {ns.out}: {why}", file=sys.stderr)
            return ExitStatus.USAGE
        out = target.file
    counts: dict[str, int] = {}
    try:
        if ns.wait:
            wait_done(client, ns.group, ns.timeout)
        for outcome in client.group_results(ns.group):
            out.write(json.dumps(outcome.to_dict(), sort_keys=True) + "\n")
            counts[outcome.state] = counts.get(outcome.state, 0) + 1
        if target is not None:
            target.commit()
    except BaseException:
        if target is not None:
            target.discard()
        raise
    shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    where = "stdout" if ns.out == "-" else ns.out
    print(f"group {ns.group}: {sum(counts.values())} jobs ({shown}) to {where}", file=sys.stderr)
    return ExitStatus.OK if set(counts) <= {"SUCCESS"} else ExitStatus.JOB_FAILED


def add_results(sub: Any) -> None:
    """`imgqueue results GROUP [--out FILE] [--wait]`."""
    r = sub.add_parser(
        "results",
        help="export every job of a group (JSON lines: id, state, result or error)",
        description="One JSON line per job of the group, in submit order: its id and state, "
        "and its result or error once it has ended (as `imgqueue result` prints them). Exit "
        "status 0 when every job succeeded, 1 otherwise (some failed, were cancelled, or "
        "have not ended).",
    )
    r.add_argument("group", help="the group id `imgqueue submit --group` printed")
    r.add_argument("--out", default="-", help="file to write, - for stdout")
    r.add_argument(
        "--wait", action="store_true", help="wait until every job of the group has ended first"
    )
    r.add_argument("--timeout", type=float, default=None, help="seconds --wait waits at most")
    r.set_defaults(func=cmd_results)


class _Replacement:
    """`--out FILE`, written to a temporary file beside it and renamed over it by `commit`:
    until then (an unknown group, a lost Redis, an interrupt) FILE stays as it was."""

    def __init__(self, path: str) -> None:
        target = os.path.realpath(path)  # through a symlink, as open() writes
        try:
            mode: int | None = os.stat(target).st_mode
        except FileNotFoundError:
            mode = None
        self.target = target
        self.temp: str | None = None
        if mode is not None and not stat.S_ISREG(mode):  # /dev/stdout, a FIFO: written as is
            self.file = open(target, "w", encoding="utf-8")  # noqa: SIM115
            return
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # what open() would create
        self.mode = stat.S_IMODE(mode)
        fd, self.temp = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target)
        )
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    def commit(self) -> None:
        self.file.close()  # a full disk shows here, before FILE is touched
        if self.temp is not None:
            os.chmod(self.temp, self.mode)
            os.replace(self.temp, self.target)
            self.temp = None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
