"""`imgqueue cancel ID...|--group G`: cancel jobs that have not started (producer/cancel.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.exits import ExitStatus
from cli.submit import expand_sources
from producer.client import Client


def cmd_cancel(client: Client, ns: argparse.Namespace) -> int:
    ids = list(expand_sources(ns.ids, sys.stdin))
    if ns.group is not None:
        ids += client.group_ids(ns.group)  # UnknownGroup: a usage error, as for `status G`
    elif not ids:
        print("error: give task ids, - for stdin, or --group", file=sys.stderr)
        return ExitStatus.USAGE
    result = client.cancel(ids)
    verdicts = result.verdicts()
    for task_id in dict.fromkeys(ids):
        line = {"id": task_id, "cancel": verdicts[task_id]}
        if task_id in result.states:
            line["state"] = result.states[task_id]
        print(json.dumps(line, sort_keys=True), flush=True)
    return ExitStatus.OK if result.all_cancelled else ExitStatus.JOB_FAILED


def add_subparser(sub: Any) -> None:
    """`imgqueue cancel ID...|--group G`; ids given as `-` are read from stdin."""
    c = sub.add_parser(
        "cancel",
        help="cancel jobs that have not started (they end REVOKED, never run); prints one JSON "
        "line per id; exit 1 when some were too late or unknown",
        description="A cancel waits in Redis for the job's message, across worker restarts "
        "and while no worker runs (30 days at most). A job that has started finishes; it is "
        "reported too late.",
    )
    c.add_argument("ids", nargs="*", help="task ids, or - for stdin")
    c.add_argument("--group", default=None, help="every job of this group (submit --group)")
    c.set_defaults(func=cmd_cancel)
