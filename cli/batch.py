"""`imgqueue batch SOURCE... --out FILE` and `imgqueue batch --resume FILE` (producer/batch.py;
docs/batch.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cli.common import _bulk_size, _priority, _top_k, served_name
from cli.exits import ExitStatus
from producer.batch import Options, open_batch, run_batch
from producer.batch_report import summary
from producer.batch_window import MAX_IN_FLIGHT
from producer.client import Client


def _in_flight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_IN_FLIGHT:
        raise argparse.ArgumentTypeError(
            f"expected a number of jobs within 1..{MAX_IN_FLIGHT}, got {text!r}"
        )
    return value


def add_subparser(sub: Any) -> None:
    b = sub.add_parser(
        "batch",
        help="every source of manifests, directories or object-store prefixes to one output "
        "file (JSON lines or Parquet), resumable after any kill",
        description="Keeps a window of jobs queued, writes each one's row as it ends and then "
        "deletes its result from Redis. Killed at any moment, `imgqueue batch --resume FILE` "
        "goes on: the output holds exactly one row per source. Exit status as `submit --wait`: "
        "1 when some job failed.",
    )
    b.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="a manifest (one source per line; - for stdin), a directory (its images, "
        "recursive) or an object-store prefix (s3://bucket/images/)",
    )
    b.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="FILE.jsonl or FILE.parquet (the parquet extra), local or s3://...; an existing "
        "file that is not this batch's own is never overwritten",
    )
    b.add_argument(
        "--resume",
        metavar="FILE",
        default=None,
        help="go on with the batch writing FILE, with its sources and options",
    )
    b.add_argument(
        "--in-flight",
        type=_in_flight,
        default=None,
        metavar="N",
        help="jobs queued at most (default: about 10 seconds of the workers' measured speed, "
        f"at least 64 bulk messages, at most {MAX_IN_FLIGHT})",
    )
    b.add_argument("--top-k", type=_top_k, default=None, help="predictions per image (default 5)")
    b.add_argument("--queue", default=None, help="queue to send to (default: celery)")
    b.add_argument("--model", type=served_name, default=None, help="the model to run (see submit)")
    b.add_argument("--priority", type=_priority, default=None, help="0 (highest, the default)..9")
    b.add_argument(
        "--bulk-size", type=_bulk_size, default=None, help="images per message (default 64)"
    )
    b.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    b.set_defaults(func=cmd_batch)


def cmd_batch(client: Client, ns: argparse.Namespace) -> int:
    if ns.resume is not None and ns.out is not None and ns.resume != ns.out:
        print("error: give --out FILE or --resume FILE, not two files", file=sys.stderr)
        return ExitStatus.USAGE
    out = ns.resume or ns.out
    if out is None:
        print("error: give --out FILE (or --resume FILE)", file=sys.stderr)
        return ExitStatus.USAGE
    given = {
        name: getattr(ns, name)
        for name in ("top_k", "queue", "model", "priority", "bulk_size")
        if getattr(ns, name) is not None
    }
    options = None if ns.resume and not given else Options(**given)

    def say(line: str) -> None:
        print(f"batch: {line}", file=sys.stderr, flush=True)

    batch = open_batch(out, ns.sources, options, resume=ns.resume is not None, stdin=sys.stdin)
    if batch.resumed:
        say(f"going on with batch {batch.journal.batch} ({batch.paths.journal})")
    started = time.monotonic()
    try:
        bar = sys.stderr if ns.progress or sys.stderr.isatty() else None
        tally = run_batch(client, batch, in_flight=ns.in_flight, progress=bar, say=say)
    except (Exception, KeyboardInterrupt):
        say(f"stopped: `imgqueue batch --resume {out}` goes on from here")
        raise
    seconds = None if batch.resumed else time.monotonic() - started  # a rate of this run's
    print(summary(tally, out, seconds), file=sys.stderr, flush=True)
    return ExitStatus.JOB_FAILED if tally.failed else ExitStatus.OK
