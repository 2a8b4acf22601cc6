"""Command line: `python -m producer submit|result ...` (also installed as `imgqueue`).

Exit status: 0 when every job succeeded (or was only submitted), 1 when any job failed,
2 for usage errors, 3 when Redis was unreachable or results did not arrive in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from producer.client import Client, Outcome
from producer.contract import DEFAULT_TOP_K, IMAGE_EXTENSIONS, MAX_TOP_K
from producer.errors import ProducerError
from producer.render import add_subparser as add_render

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def expand_sources(args: Iterable[str], stdin: TextIO) -> Iterator[str]:
    """URLs and files as given; `-` reads one source per line; directories expand to images."""
    for arg in args:
        if arg == "-":
            yield from (line.strip() for line in stdin if line.strip())
        elif "://" not in arg and os.path.isdir(arg):
            for path in sorted(Path(arg).rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    yield str(path)
        else:
            yield arg


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal or forced."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled and total > 1
        self.done = self.failed = 0
        self.start = time.monotonic()

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        self.failed += not outcome.ok
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f"  {self.failed} failed  {rate:.1f}/s"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _print_outcomes(
    client: Client, ids: Sequence[str], timeout: float | None, progress: bool
) -> int:
    bar = Progress(len(ids), sys.stderr, progress or sys.stderr.isatty())
    any_failed = False
    try:
        for outcome in client.wait(ids, timeout=timeout):
            print(json.dumps(outcome.to_dict(), sort_keys=True), flush=True)
            any_failed |= not outcome.ok
            bar.update(outcome)
    finally:
        bar.close()
    return EXIT_JOB_FAILED if any_failed else EXIT_OK


def cmd_submit(client: Client, ns: argparse.Namespace) -> int:
    sources = list(expand_sources(ns.sources, sys.stdin))
    if not sources:
        print("error: no sources to submit", file=sys.stderr)
        return EXIT_USAGE
    ids = client.submit_many(sources, top_k=ns.top_k)
    if not ns.wait:
        for task_id in ids:
            print(task_id, flush=True)
        return EXIT_OK
    return _print_outcomes(client, ids, ns.timeout, ns.progress)


def cmd_result(client: Client, ns: argparse.Namespace) -> int:
    ids = list(expand_sources(ns.ids, sys.stdin))
    if ns.wait:
        return _print_outcomes(client, ids, ns.timeout, ns.progress)
    any_failed = False
    for task_id in ids:
        outcome = client.status(task_id)
        print(json.dumps(outcome.to_dict(), sort_keys=True), flush=True)
        any_failed |= outcome.done and not outcome.ok
    return EXIT_JOB_FAILED if any_failed else EXIT_OK


def _top_k(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"top-k must be within 1..{MAX_TOP_K}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgqueue", description=__doc__)
    parser.add_argument(
        "--redis-url", default=None, help="broker and result backend (default: $REDIS_URL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="enqueue image URLs or paths; prints task ids")
    p.add_argument("sources", nargs="+", help="URL, path, directory (recursive) or - for stdin")
    p.add_argument("--top-k", type=_top_k, default=DEFAULT_TOP_K)
    p.add_argument("--wait", action="store_true", help="print one JSON result per line")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for all")
    p.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    p.set_defaults(func=cmd_submit)

    r = sub.add_parser("result", help="print results (JSON lines) for task ids")
    r.add_argument("ids", nargs="+", help="task ids, or - for stdin")
    r.add_argument("--wait", action="store_true", help="wait until each job has ended")
    r.add_argument("--timeout", type=float, default=None, help="seconds to wait for all")
    r.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    r.set_defaults(func=cmd_result)
    add_render(sub)  # offline: needs no Redis
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if getattr(ns, "offline", None) is not None:
        offline: int = ns.offline(ns)
        return offline
    try:
        with Client(ns.redis_url) as client:
            code: int = ns.func(client, ns)
            return code
    except ProducerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
