"""`imgqueue dead-letters list|requeue|purge`: messages no worker could run
(core/deadletters.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cli.exits import ExitStatus
from core.deadletters import DeadLetters
from producer.client import Client


def cmd_dead_letters(client: Client, ns: argparse.Namespace) -> int:
    letters = DeadLetters(client.redis, client.config)
    if ns.action == "list":
        entries = letters.read(ns.limit)
        for entry in entries:
            if ns.json:
                print(json.dumps(entry.to_dict(), sort_keys=True), flush=True)
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
                print(
                    f"{entry.id[:12]}  {when}  {entry.queue:<12} {entry.reason:<13} {entry.detail}"
                )
        if not ns.json:
            print(f"{len(entries)} shown, {letters.count()} in all", file=sys.stderr)
        return ExitStatus.OK
    if not ns.ids and not ns.all:
        print(f"error: give dead-letter ids, or --all to {ns.action} every one", file=sys.stderr)
        return ExitStatus.USAGE
    ids = None if ns.all else ns.ids
    if ns.action == "requeue":
        done, problems = letters.requeue(ids)
    else:
        done, problems = letters.purge(ids)
    print(f"{ns.action}d {done}")
    for problem in problems:
        print(f"not {ns.action}d: {problem}", file=sys.stderr)
    return ExitStatus.JOB_FAILED if problems else ExitStatus.OK


def add_subparser(sub: Any) -> None:
    """`imgqueue dead-letters list|requeue|purge [ID...] [--all]`."""
    d = sub.add_parser(
        "dead-letters",
        help="list, requeue or purge messages no worker could run",
        description="Messages a worker refused (not JSON, no envelope, undecodable body, "
        "unknown task, too large, rejected) wait in the dead-letter list; nothing retries "
        "them by itself.",
    )
    d.add_argument("action", choices=("list", "requeue", "purge"))
    d.add_argument(
        "ids", nargs="*", help="entry ids (or their first characters), for requeue/purge"
    )
    d.add_argument("--all", action="store_true", help="requeue or purge every entry")
    d.add_argument("--limit", type=int, default=100, help="entries to list, newest first")
    d.add_argument("--json", action="store_true", help="list as JSON lines")
    d.set_defaults(func=cmd_dead_letters)
