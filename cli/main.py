"""Command line: `python -m producer submit|batch|result|results|events|cancel|status|limits|
dead-letters|model ...` (also `imgqueue`).

Exit status (the table in cli/exits.py):
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from cli import (
    batch,
    cancel,
    dead_letters,
    events,
    keys,
    limits,
    models,
    render,
    results,
    serve,
    status,
    submit,
)
from cli.common import Parser, TopFormatter
from cli.exits import ExitStatus, status_for
from cli.exits import describe as describe_exits
from core.errors import ProducerError
from producer.client import Client

__doc__ = f"{__doc__ or ''}{describe_exits()}\n"

# Each command group adds its subcommands, in the order `--help` lists them. A subcommand sets
# `func` (called with a connected Client) or `offline` (called without Redis).
COMMANDS = (
    submit.add_subparser,
    results.add_result,
    dead_letters.add_subparser,
    status.add_subparser,
    limits.add_subparser,
    cancel.add_subparser,
    batch.add_subparser,
    results.add_results,
    events.add_subparser,
    models.add_subparser,
    keys.add_subparser,
    render.add_subparser,  # offline: needs no Redis
    serve.add_subparser,  # offline: the gateway makes its own clients
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imgqueue", description=__doc__, formatter_class=TopFormatter)
    # Where Redis is: the names are Client.from_settings's (and the gateway settings').
    parser.add_argument(
        "--redis-url",
        default=None,
        help="the broker, and the results unless --result-url (default: $REDIS_URL)",
    )
    parser.add_argument(
        "--sentinel-master",
        default=None,
        help="master name, for a sentinel:// URL (default: $REDIS_SENTINEL_MASTER)",
    )
    parser.add_argument(
        "--key-prefix", default=None, help="prefix of every key (default: $REDIS_KEY_PREFIX)"
    )
    parser.add_argument(
        "--result-url",
        default=None,
        help="where results are read, e.g. redis-cluster://host:port,host:port (default: "
        "$RESULT_URL, else --redis-url)",
    )
    parser.add_argument(
        "--result-sentinel-master",
        default=None,
        help="master name, for a sentinel:// result URL (default: $RESULT_SENTINEL_MASTER)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    client: Client | None = None
    try:
        if getattr(ns, "offline", None) is not None:
            code: int = ns.offline(ns)
        else:
            client = Client.from_settings(ns)
            with client:
                code = ns.func(client, ns)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        _drop_stdout()
        return ExitStatus.BROKEN_PIPE
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except Exception as exc:
        exit_status = status_for(exc)
        if exit_status is None:
            raise  # a bug: its traceback is what helps
        print(f"error: {_explain(exc, client)}", file=sys.stderr)
        return exit_status


def _explain(exc: Exception, client: Client | None) -> str:
    """One line for an error: the producer's own say what happened; a Redis or kombu error
    that no wrapper caught (a server that is not Redis, a dropped connection) gets where."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ProducerError | OSError):
        return text
    where = "Redis"
    if client is not None:
        where = f"Redis at {client.config.safe_url()}"
        if client.result_config.safe_url() != client.config.safe_url():
            where += f" (or the result store at {client.result_config.safe_url()})"
    from redis.exceptions import InvalidResponse

    hint = " (not a Redis server?)" if isinstance(exc, InvalidResponse) else ""
    return f"cannot reach {where}: {text}{hint}"


def _drop_stdout() -> None:
    """After a closed pipe: what is left for stdout goes to /dev/null, or Python's own flush at
    exit fails once more and prints "Exception ignored ... BrokenPipeError"."""
    with contextlib.suppress(OSError, ValueError):  # no real stdout (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
