"""`imgqueue submit SOURCE...`, and what the commands that take many ids share: `-` for stdin
and directories expanded (`expand_sources`), and results printed as they end (`print_outcomes`,
with its `Progress` bar)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cli.common import _bulk_size, _priority, _top_k, _webhook, parse_deadline, served_name
from cli.exits import ExitStatus
from core.contract import DEFAULT_TOP_K, IMAGE_EXTENSIONS, MAX_PRIORITY, MIN_PRIORITY
from core.objects import is_prefix
from producer.client import DEFAULT_BULK_SIZE, Client, Outcome


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


def print_outcomes(
    client: Client, ids: Sequence[str], timeout: float | None, progress: bool
) -> int:
    """Wait for the jobs, printing one JSON line each as it ends; on any error, every job not
    printed yet as last seen, so that each id sent can still be found again."""
    bar = Progress(len(ids), sys.stderr, progress or sys.stderr.isatty())
    any_failed = False
    printed: set[str] = set()
    try:
        try:
            for outcome in client.wait(ids, timeout=timeout):
                print(json.dumps(outcome.to_dict(), sort_keys=True), flush=True)
                printed.add(outcome.task_id)
                any_failed |= not outcome.ok
                bar.update(outcome)
        finally:
            bar.close()
    except BrokenPipeError:
        raise  # nobody reads stdout any more
    except (Exception, KeyboardInterrupt) as exc:
        # A timeout, a lost result store, a Ctrl-C: every job sent can still be found again,
        # the unfinished ones with the last state read of them (PENDING when none was).
        known = {o.task_id: o for o in getattr(exc, "unfinished", ())}
        for task_id in dict.fromkeys(ids):
            if task_id not in printed:
                outcome = known.get(task_id) or Outcome(task_id, "PENDING")
                print(json.dumps(outcome.to_dict(), sort_keys=True), flush=True)
        raise
    return ExitStatus.JOB_FAILED if any_failed else ExitStatus.OK


def cmd_submit(client: Client, ns: argparse.Namespace) -> int:
    sources = list(expand_sources(ns.sources, sys.stdin))
    if not sources:
        print("error: no sources to submit", file=sys.stderr)
        return ExitStatus.USAGE
    try:
        ids = client.submit_many(
            sources,
            top_k=ns.top_k,
            queue=ns.queue,
            priority=ns.priority,
            bulk_size=ns.bulk_size,
            model=ns.model,
            webhook=ns.webhook,
            deadline=ns.deadline,
            group=ns.group,
        )
    except Exception as exc:
        if isinstance(exc, ValueError) and not getattr(exc, "sent", None):
            # --queue and --model disagree, a bad source: nothing was sent
            print(f"error: {exc}", file=sys.stderr)
            return ExitStatus.USAGE
        _report_sent(exc, sources)
        raise
    if not ids:
        print("error: no sources to submit: no image under the prefixes given", file=sys.stderr)
        return ExitStatus.USAGE
    group_id = getattr(ids, "group_id", None)
    if group_id is not None and not ns.wait:
        print(group_id, flush=True)  # its ids: `imgqueue results GROUP`
        return ExitStatus.OK
    if group_id is not None:
        print(f"group {group_id}", file=sys.stderr, flush=True)
    if not ns.wait:
        for task_id in ids:
            print(task_id, flush=True)
        return ExitStatus.OK
    return print_outcomes(client, ids, ns.timeout, ns.progress)


def _report_sent(exc: Exception, sources: list[str]) -> None:
    """Redis went away part way, or a listing failed: the messages already sent will run, so
    their ids are printed (stdout, as on success) before the error is reported."""
    sent: list[str] = getattr(exc, "sent", [])
    uncertain: list[str] = getattr(exc, "uncertain", [])
    for task_id in uncertain:  # `imgqueue result ID` tells: PENDING forever if it never went
        print(f"uncertain {task_id}", file=sys.stderr)
    if not sent:
        return
    # A prefix's objects are counted as they are listed: the total is not known.
    of_total = "" if any(map(is_prefix, sources)) else f" of {len(sources)}"
    group = getattr(exc, "group_id", None)
    if group is not None:
        print(f"group {group}", file=sys.stderr, flush=True)
    for task_id in sent:
        print(task_id, flush=True)
    more = f" ({len(uncertain)} more may have been: 'uncertain' above)" if uncertain else ""
    print(
        f"{len(sent)}{of_total} job(s) were sent before the error; their ids are on stdout{more}",
        file=sys.stderr,
        flush=True,
    )


def add_subparser(sub: Any) -> None:
    p = sub.add_parser("submit", help="enqueue image URLs or paths; prints task ids")
    p.add_argument("sources", nargs="+", help="URL, path, directory (recursive) or - for stdin")
    p.add_argument("--top-k", type=_top_k, default=DEFAULT_TOP_K, help="predictions per image")
    p.add_argument("--queue", default=None, help="queue to send to (default: celery)")
    p.add_argument(
        "--model",
        type=served_name,
        default=None,
        help="the model to run: its workers' queue, model.NAME (exit 6 when no worker of it "
        "has registered; see `imgqueue model list`)",
    )
    p.add_argument(
        "--priority",
        type=_priority,
        default=None,
        help=f"{MIN_PRIORITY} (highest, the default) .. {MAX_PRIORITY} (lowest)",
    )
    p.add_argument(
        "--bulk-size",
        type=_bulk_size,
        default=DEFAULT_BULK_SIZE,
        help="images per message (default: %(default)s; 1: one message per image, for workers "
        "older than classify_many)",
    )
    p.add_argument(
        "--webhook",
        type=_webhook,
        default=None,
        metavar="URL",
        help="POST each job's result there when it ends, signed (python -m services.webhooks; "
        "docs/lifecycle.md)",
    )
    p.add_argument(
        "--deadline",
        type=parse_deadline,
        default=None,
        metavar="SECONDS|ISO8601",
        help="a job no worker has started by then ends REVOKED (Expired), never run: seconds "
        "from now, or a time such as 2030-01-02T03:04:05Z (no offset: local time)",
    )
    p.add_argument(
        "--group",
        action="store_true",
        help="submit them as one group and print its id instead of the task ids (imgqueue "
        "status GROUP, imgqueue results GROUP)",
    )
    p.add_argument("--wait", action="store_true", help="print one JSON result per line")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for all")
    p.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    p.set_defaults(func=cmd_submit)
