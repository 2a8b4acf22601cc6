"""`imgqueue keys ...`: the API keys of the HTTP gateway's tenants (core/tenants.py).

    imgqueue keys create --tenant acme [--queues celery,bulk] [--models defects,(default)]
                         [--max-queued N]      a new key: its last line of output is the key
    imgqueue keys list [--json]                every key: tenant, its first characters, created
    imgqueue keys revoke KEY_OR_PREFIX         the key, or every key starting so (exit 2: none)

Only a key's sha256 is stored: `create` prints the key once, and nothing prints it again.
Writing keys needs write access to imgqueue:keys and imgqueue:tenants (deploy/redis.conf's
admin user); a gateway only reads them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from cli.common import print_table, redis_errors
from cli.exits import ExitStatus
from core.models import DEFAULT_LABEL, BadModelName, check_name
from core.tenants import TenantError, create_key, list_keys, revoke

if TYPE_CHECKING:
    from producer.client import Client

_WRITERS = "writing API keys needs the admin user (imgqueue:keys, imgqueue:tenants)"


_NAME = re.compile(r"^[A-Za-z0-9_.:()-]+$")


def _names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated queue or model names ("" for none: any)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names (letters, digits, _ . : -), got {text!r}"
        )
    return names


def _models(text: str) -> tuple[str, ...]:
    """Served model names; `(default)` is the default model, as `imgqueue model list` shows it."""
    out = []
    for name in _names(text):
        if name == DEFAULT_LABEL:
            out.append("")
            continue
        try:
            out.append(check_name(name))
        except BadModelName as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return tuple(out)


def _max_queued(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of jobs, 0 or more, got {text!r}")
    return value


def _when(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)) if created else "-"


def _listed(names: tuple[str, ...]) -> str:
    return ",".join(n or DEFAULT_LABEL for n in names) or "any"


def cmd_create(client: Client, ns: argparse.Namespace) -> int:
    try:
        with redis_errors(client, _WRITERS):
            key, tenant = create_key(
                client.redis,
                client.config,
                ns.tenant,
                queues=ns.queues,
                models=ns.models,
                max_queued=ns.max_queued,
            )
    except TenantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    quota = "none" if tenant.max_queued is None else str(tenant.max_queued)
    print(
        f"tenant {tenant.name}: queues {_listed(tenant.queues)}, models "
        f"{_listed(tenant.models)}, max queued {quota}\n"
        "the API key (shown this once; only its hash is stored):",
        file=sys.stderr,
        flush=True,
    )
    print(key)  # the last line: `imgqueue keys create ... | tail -1`
    return ExitStatus.OK


def cmd_list(client: Client, ns: argparse.Namespace) -> int:
    with redis_errors(client, "reading imgqueue:keys needs the gateway user or more"):
        keys = list_keys(client.redis, client.config)
    if ns.json:
        rows = [{"tenant": k.tenant, "key": k.shown, "created": k.created} for k in keys]
        print(json.dumps(rows, sort_keys=True))
        return ExitStatus.OK
    table = [["tenant", "key", "created"]]
    print_table(table + [[k.tenant, k.shown + "...", _when(k.created)] for k in keys])
    if not keys:
        print("no API key: make one with `imgqueue keys create --tenant NAME`", file=sys.stderr)
    return ExitStatus.OK


def cmd_revoke(client: Client, ns: argparse.Namespace) -> int:
    try:
        with redis_errors(client, _WRITERS):
            gone = revoke(client.redis, client.config, ns.key.rstrip("."))  # as `list` shows it
    except TenantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    if not gone:
        print("error: no API key matches (see `imgqueue keys list`)", file=sys.stderr)
        return ExitStatus.USAGE
    for k in gone:
        print(f"revoked {k.shown}... of tenant {k.tenant} (gateways refuse it within seconds)")
    return ExitStatus.OK


def add_subparser(sub: Any) -> None:
    """`imgqueue keys create|list|revoke`."""
    group = sub.add_parser(
        "keys",
        help="the HTTP gateway's API keys and tenants: create, list, revoke",
        description="Each API key belongs to a tenant, which may be limited to some queues and "
        "models and to a number of unfinished jobs. Keys are stored hashed: `create` prints a "
        "key once. Creating and revoking need the admin user of deploy/redis.conf.",
    )
    commands = group.add_subparsers(dest="keys_command", required=True)
    c = commands.add_parser(
        "create",
        help="a new API key for a tenant (made on first use); prints the key last",
        description="Options given replace the tenant's (for all its keys); those left out keep "
        "them. The key is the last line of output, and is never shown again.",
    )
    c.add_argument("--tenant", required=True, help="the tenant's name")
    c.add_argument(
        "--queues", type=_names, default=None, help="comma-separated queues it may use ('': any)"
    )
    c.add_argument(
        "--models",
        type=_models,
        default=None,
        help=f"comma-separated models it may use, {DEFAULT_LABEL} for the default one ('': any)",
    )
    c.add_argument(
        "--max-queued",
        type=_max_queued,
        default=None,
        metavar="N",
        help="at most N unfinished jobs at once (submits past it are refused: HTTP 429)",
    )
    c.set_defaults(func=cmd_create)
    ls = commands.add_parser("list", help="every key: tenant, first characters, created")
    ls.add_argument("--json", action="store_true", help="one JSON list")
    ls.set_defaults(func=cmd_list)
    rv = commands.add_parser("revoke", help="revoke a key, or every key starting so")
    rv.add_argument("key", help="the key, or the first characters `keys list` shows")
    rv.set_defaults(func=cmd_revoke)
