"""`imgqueue status [GROUP]`: queues, workers, dead letters and throughput (producer/status.py),
or one group's counts, progress and ETA (producer/groups.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.exits import ExitStatus
from core.settings import ReportSettings, SettingError, load
from producer.client import Client


def cmd_status(client: Client, ns: argparse.Namespace) -> int:
    if ns.group is not None:
        group = client.group(ns.group)  # UnknownGroup: a usage error (exit 2)
        print(json.dumps(group.to_dict(), sort_keys=True) if ns.json else group.render())
        return ExitStatus.OK

    from producer import status

    try:
        settings = load(ReportSettings)  # QUEUES, DEAD_WORKER_TIMEOUT
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    queues = [q for q in ns.queue or settings.queues if q]
    state = status.gather(
        client,
        queues,
        ns.timeout,
        settings.dead_worker_timeout,
        say=lambda line: print(f"status: {line}", file=sys.stderr, flush=True),
    )
    if ns.json:
        print(json.dumps(state, sort_keys=True))
    else:
        print(status.render(state))
    return ExitStatus.OK


def add_subparser(sub: Any) -> None:
    """`imgqueue status [GROUP] [--queue Q] [--json] [--timeout S]`."""
    st = sub.add_parser(
        "status",
        help="queues (depth, in flight), workers, dead letters, recent throughput; or a "
        "group's counts, progress and ETA",
    )
    st.add_argument(
        "group", nargs="?", default=None, help="a group id: that group's counts, progress, ETA"
    )
    st.add_argument(
        "--queue", action="append", help="a queue to show even with no worker (default $QUEUES)"
    )
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument(
        "--timeout",
        type=float,
        default=1.5,
        help="seconds to wait for the next worker's answer; it stops waiting once every "
        "worker with a fresh heartbeat has answered",
    )
    st.set_defaults(func=cmd_status)
