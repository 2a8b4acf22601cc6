"""`imgqueue model ...`: the models workers serve (core.models' registry).

    imgqueue model list [--json]      every registered model: name, architecture, version, queue
    imgqueue model forget NAME        drop an entry ('' for the default model; admin user)
    imgqueue model pack CHECKPOINT --arch A --labels L --name N --out DIR
                                      a training checkpoint made into a card, weights, labels
    imgqueue model check DIR|CARD     the worker's start-up checks, without Redis

`pack` and `check` need the worker extra (torch), which they import only when run.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.common import print_table, redis_errors, served_name
from cli.exits import ExitStatus
from core.models import forget, registered, shown

if TYPE_CHECKING:
    from producer.client import Client


@dataclass(frozen=True)
class Command:
    """One `imgqueue model` subcommand."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Client, argparse.Namespace], int] | None = None  # needs Redis
    offline: Callable[[argparse.Namespace], int] | None = None  # needs no Redis
    description: str | None = None


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


def cmd_list(client: Client, ns: argparse.Namespace) -> int:
    with redis_errors(client, "reading imgqueue:models needs the producer user or more"):
        models = registered(client.redis, client.config)
    if ns.json:
        print(json.dumps(list(models.values()), sort_keys=True))
        return ExitStatus.OK
    now = time.time()
    rows = [["name", "model", "arch", "version", "weights", "labels", "queue", "registered"]]
    for name, m in models.items():
        fields = ("model", "arch", "version", "weights", "labels", "queue")
        rows.append([shown(name), *(str(m.get(k) or "-") for k in fields)])
        rows[-1].append(_age(m.get("seen"), now))
    print_table(rows)
    if not models:
        print("no model registered: workers register when they are ready", file=sys.stderr)
    return ExitStatus.OK


def cmd_forget(client: Client, ns: argparse.Namespace) -> int:
    with redis_errors(client, "forgetting a model needs the admin user"):
        forgotten = forget(client.redis, client.config, ns.name)
    if forgotten:
        print(f"model {shown(ns.name)}: forgotten (its workers register again when ready)")
    else:
        print(f"model {shown(ns.name)}: was not registered", file=sys.stderr)
    return ExitStatus.OK


def _offline_errors(action: Callable[[], int]) -> int:
    """Run a command that loads torch: a missing worker extra or a refused model is an exit 2
    with the reason, as a worker would have refused it."""
    try:
        from worker.errors import ConfigError, WeightsUnavailable
    except ImportError as exc:  # pragma: no cover - a producer-only install
        print(f"error: this command needs the worker extra ({exc})", file=sys.stderr)
        return ExitStatus.USAGE
    try:
        return action()
    except ImportError as exc:
        print(f"error: this command needs the worker extra ({exc})", file=sys.stderr)
        return ExitStatus.USAGE
    except (ConfigError, WeightsUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE


def cmd_pack(ns: argparse.Namespace) -> int:
    def run() -> int:
        from worker.model.card import Preprocessing
        from worker.model.pack import describe, pack

        preprocess = None
        if ns.resize or ns.crop:
            if not (ns.resize and ns.crop):
                print("error: --resize and --crop go together", file=sys.stderr)
                return ExitStatus.USAGE
            raw = {"resize": ns.resize, "crop": ns.crop, "interpolation": ns.interpolation}
            preprocess = Preprocessing.from_dict(raw, "--resize/--crop")
        packed = pack(
            Path(ns.checkpoint),
            arch=ns.arch,
            labels=Path(ns.labels),
            out=Path(ns.out),
            name=ns.name,
            version=ns.version,
            preprocess=preprocess,
            trust_pickle=ns.trust_pickle,
        )
        print(f"{ns.checkpoint}: found {packed.found}", file=sys.stderr)
        print(f"wrote {packed.card} (MODEL_CARD for its workers)", file=sys.stderr)
        print(json.dumps(describe(packed.spec), indent=2))
        return ExitStatus.OK

    return _offline_errors(run)


def cmd_check(ns: argparse.Namespace) -> int:
    def run() -> int:
        from worker.model.pack import check, describe

        spec = check(Path(ns.card), ns.precision)
        print(json.dumps(describe(spec), indent=2))
        print(f"{ns.card}: the model loads and runs; a worker would start", file=sys.stderr)
        return ExitStatus.OK

    return _offline_errors(run)


def _pack_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a state dict, a Lightning-style checkpoint, or a model")
    p.add_argument("--arch", required=True, help="the torchvision architecture, e.g. resnet50")
    p.add_argument("--labels", required=True, help="one label per line, or JSON")
    p.add_argument("--name", required=True, type=served_name, help="what producers route by")
    p.add_argument("--version", default="1", help="named in every result")
    p.add_argument("--out", required=True, help="the directory to write the model into")
    p.add_argument("--resize", type=int, default=0, help="preprocessing: the shorter side")
    p.add_argument("--crop", type=int, default=0, help="preprocessing: the centre crop")
    p.add_argument(
        "--interpolation",
        default="bilinear",
        choices=("bilinear", "bicubic"),
        help="preprocessing: the resize filter",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle a file that holds more than tensors (runs code from it: your own only)",
    )


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("card", help="a packed model's directory, or its model.json")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "int8"),
        help="the precision a worker would run it at",
    )


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
    "pack": Command(
        help="make a training checkpoint into a model workers serve (MODEL_CARD)",
        arguments=_pack_arguments,
        offline=cmd_pack,
        description="Reads a state dict, a Lightning-style checkpoint or (with --trust-pickle) "
        "a whole pickled model; writes model.json, weights.pt (tensors only) and labels.json "
        "into --out, then runs `imgqueue model check` on them (docs/models.md).",
    ),
    "check": Command(
        help="run a worker's start-up checks on a packed model, without Redis",
        arguments=_check_arguments,
        offline=cmd_check,
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
