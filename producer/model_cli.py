"""`imgqueue model ...`: the models workers serve (producer.models' registry).

    imgqueue model list [--json]      every registered model: name, architecture, version, queue
    imgqueue model forget NAME        drop an entry ('' for the default model; admin user)

Each subcommand is one entry of COMMANDS: its help, its arguments, and either `run` (called
with a connected Client; errors as for every command) or `offline` (called without Redis, for
commands that only read files). Adding one is adding an entry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from producer.models import BadModelName, check_name, forget, registered, shown

if TYPE_CHECKING:
    from producer.client import Client

EXIT_OK, EXIT_UNAVAILABLE = 0, 3


@dataclass(frozen=True)
class Command:
    """One `imgqueue model` subcommand."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Client, argparse.Namespace], int] | None = None  # needs Redis
    offline: Callable[[argparse.Namespace], int] | None = None  # needs no Redis
    description: str | None = None


def served_name(text: str) -> str:
    """An argparse type: a served name, or '' for the default model."""
    if text == "":
        return text
    try:
        return check_name(text)
    except BadModelName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age(seen: Any, now: float) -> str:
    if not isinstance(seen, int | float):
        return "?"
    seconds = max(now - float(seen), 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _redis_errors(client: Client, action: Callable[[], int], who: str) -> int:
    """Run `action`, turning Redis' refusals into the CLI's messages and exit statuses."""
    import redis

    from producer.errors import BrokerUnavailable

    try:
        return action()
    except redis.exceptions.NoPermissionError as exc:
        print(f"error: {exc} ({who})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except redis.exceptions.OutOfMemoryError as exc:
        raise client.full_error() from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        where = client.config.safe_url()
        raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from exc


def cmd_list(client: Client, ns: argparse.Namespace) -> int:
    def run() -> int:
        models = registered(client.redis, client.config)
        if ns.json:
            print(json.dumps(list(models.values()), sort_keys=True))
            return EXIT_OK
        now = time.time()
        rows = [["name", "model", "arch", "version", "weights", "labels", "queue", "registered"]]
        for name, m in models.items():
            fields = ("model", "arch", "version", "weights", "labels", "queue")
            rows.append([shown(name), *(str(m.get(k) or "-") for k in fields)])
            rows[-1].append(_age(m.get("seen"), now))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if not models:
            print("no model registered: workers register when they are ready", file=sys.stderr)
        return EXIT_OK

    return _redis_errors(client, run, "reading imgqueue:models needs the producer user or more")


def cmd_forget(client: Client, ns: argparse.Namespace) -> int:
    def run() -> int:
        if forget(client.redis, client.config, ns.name):
            print(f"model {shown(ns.name)}: forgotten (its workers register again when ready)")
        else:
            print(f"model {shown(ns.name)}: was not registered", file=sys.stderr)
        return EXIT_OK

    return _redis_errors(client, run, "forgetting a model needs the admin user")


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list")


def _forget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", type=served_name, help="the served name ('' for the default model)")


COMMANDS: dict[str, Command] = {
    "list": Command(
        help="models workers registered: name, architecture, version, weights, labels, queue",
        arguments=_list_arguments,
        run=cmd_list,
    ),
    "forget": Command(
        help="drop a model from the registry: submits for it are refused (exit 6) until one "
        "of its workers is ready again",
        arguments=_forget_arguments,
        run=cmd_forget,
        description="A model stays registered after its last worker stops, so jobs for it "
        "wait in its queue; forget it to refuse them at submit instead. Needs write access "
        "to imgqueue:models (the admin user of deploy/redis.conf).",
    ),
}


def add_subparser(sub: Any) -> None:
    """`imgqueue model <command>`, one subparser per entry of COMMANDS."""
    group = sub.add_parser(
        "model",
        help="the models workers serve: " + ", ".join(COMMANDS),
        description="Each worker serves one model on its own queue (model.NAME; the default "
        "model on celery) and registers it in imgqueue:models once ready.",
    )
    commands = group.add_subparsers(dest="model_command", required=True)
    for name, command in COMMANDS.items():
        p = commands.add_parser(name, help=command.help, description=command.description)
        command.arguments(p)
        if command.offline is not None:
            p.set_defaults(offline=command.offline)
        else:
            p.set_defaults(func=command.run)
