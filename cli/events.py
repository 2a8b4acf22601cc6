"""`imgqueue events`: follow completion events, the stream workers append every final state to
(producer/events.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.exits import ExitStatus
from producer.client import Client


def cmd_events(client: Client, ns: argparse.Namespace) -> int:
    for event in client.events(ns.since, timeout=ns.timeout):
        if ns.group is not None and event.group != ns.group:
            continue
        if ns.kind is not None and event.kind != ns.kind:
            continue
        print(json.dumps(event.to_dict(), sort_keys=True), flush=True)
        if ns.until_group_done and event.kind == "group" and event.id == ns.group:
            break
    return ExitStatus.OK


def add_subparser(sub: Any) -> None:
    """`imgqueue events [--since ID] [--timeout S] [--group G] [--kind job|group]`."""
    e = sub.add_parser(
        "events",
        help="follow completion events (JSON lines), as workers store final states",
        description="Every job that ends (SUCCESS, FAILURE, REVOKED) and every group whose "
        "last job ended, from the events stream on the result store (docs/lifecycle.md).",
    )
    e.add_argument(
        "--since",
        default="$",
        help="'$': from now on; '0': every event the stream still holds; or an entry_id to go "
        "on after",
    )
    e.add_argument(
        "--timeout", type=float, default=None, help="stop after this many seconds without one"
    )
    e.add_argument("--group", default=None, help="only this group's events")
    e.add_argument("--kind", choices=("job", "group"), default=None, help="only this kind")
    e.add_argument(
        "--until-group-done",
        action="store_true",
        help="with --group: stop at the group's completion event",
    )
    e.set_defaults(func=cmd_events)
