"""`imgqueue limits set|get|clear|list`: an operator's per-queue depth limits
(producer/limits.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.common import _integer, redis_errors
from cli.exits import ExitStatus
from producer import limits
from producer.client import Client
from producer.queues import depth

_WRITERS = "queue limits are set by the admin user"


def _limit(text: str) -> int:
    return _integer(text, 0, None, "a number of messages, 0 or more")


def cmd_limits(client: Client, ns: argparse.Namespace) -> int:
    r, config = client.redis, client.config
    with redis_errors(client, _WRITERS):
        if ns.action == "set":
            limits.set_limit(r, config, ns.queue, ns.limit)
            print(f"{ns.queue}: at most {ns.limit} messages waiting")
            return ExitStatus.OK
        if ns.action == "clear":
            had = limits.clear_limit(r, config, ns.queue)
            print(f"{ns.queue}: {'limit cleared' if had else 'had no limit'}")
            return ExitStatus.OK
        if ns.action == "get":
            queue = ns.queue or client.queue
            shown = {queue: limits.get_limit(r, config, queue)}
        else:
            shown = dict(limits.all_limits(r, config))
        rows = {q: {"limit": n, "depth": depth(r, config, q)} for q, n in shown.items()}
    if ns.json:
        print(json.dumps(rows if ns.action == "list" else rows[ns.queue or client.queue]))
        return ExitStatus.OK
    for name, row in rows.items():
        limit = "no limit" if row["limit"] is None else f"limit {row['limit']}"
        print(f"{name}: {limit}, {row['depth']} messages waiting")
    if not rows:
        print("no queue has a limit", file=sys.stderr)
    return ExitStatus.OK


def add_subparser(sub: Any) -> None:
    """`imgqueue limits set QUEUE LIMIT | get [QUEUE] | clear QUEUE | list`."""
    lim = sub.add_parser(
        "limits",
        help="per-queue depth limits: past one, submits are refused (exit 5)",
        description="An operator's limit on the messages waiting in a queue (every priority; a "
        "bulk message counts once). Clients check it before sending (re-read every few "
        "seconds); plain Celery clients (send_task) are not checked. Setting one needs write "
        "access to imgqueue:limits (the admin user of deploy/redis.conf).",
    )
    lim_sub = lim.add_subparsers(dest="action", required=True)
    ls = lim_sub.add_parser("set", help="at most LIMIT messages may wait in QUEUE")
    ls.add_argument("queue")
    ls.add_argument("limit", type=_limit, help="messages (0: refuse every submit)")
    lg = lim_sub.add_parser("get", help="a queue's limit and depth (default: celery)")
    lg.add_argument("queue", nargs="?", default=None)
    lg.add_argument("--json", action="store_true", help="one JSON object")
    lc = lim_sub.add_parser("clear", help="remove a queue's limit")
    lc.add_argument("queue")
    ll = lim_sub.add_parser("list", help="every queue with a limit, and its depth")
    ll.add_argument("--json", action="store_true", help="one JSON object")
    lim.set_defaults(func=cmd_limits)
