"""Command line: `python -m producer submit|batch|result|results|events|cancel|status|limits|
dead-letters|model ...` (also `imgqueue`).

Exit status (the table in cli/exits.py):
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cli.exits import ExitStatus, status_for
from cli.exits import describe as describe_exits
from cli.keys import add_subparser as add_keys
from cli.models import add_subparser as add_model
from cli.models import served_name
from cli.render import add_subparser as add_render
from cli.serve import add_subparser as add_serve
from core.contract import (
    DEFAULT_TOP_K,
    IMAGE_EXTENSIONS,
    MAX_BULK_IMAGES,
    MAX_PRIORITY,
    MAX_TOP_K,
    MIN_PRIORITY,
    check_top_k,
)
from core.deadletters import DeadLetters
from core.errors import ProducerError
from core.settings import ReportSettings, SettingError, load
from core.webhooks import InvalidWebhook, check_webhook
from producer import groups
from producer.batch_cli import add_subparser as add_batch
from producer.cancel import add_subparser as add_cancel
from producer.cancel import parse_deadline
from producer.client import DEFAULT_BULK_SIZE, Client, Outcome
from producer.events import add_subparser as add_events
from producer.groups import add_subparser as add_results
from producer.objects import is_prefix

__doc__ = f"{__doc__ or ''}{describe_exits()}\n"

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = ExitStatus.OK, ExitStatus.JOB_FAILED, ExitStatus.USAGE
EXIT_UNAVAILABLE = ExitStatus.UNAVAILABLE


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
    return EXIT_JOB_FAILED if any_failed else EXIT_OK


def cmd_submit(client: Client, ns: argparse.Namespace) -> int:
    sources = list(expand_sources(ns.sources, sys.stdin))
    if not sources:
        print("error: no sources to submit", file=sys.stderr)
        return EXIT_USAGE
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
            return EXIT_USAGE
        # Redis went away part way, or a listing failed: the messages already sent will run,
        # so their ids are printed (stdout, as on success) before the error is reported.
        sent: list[str] = getattr(exc, "sent", [])
        uncertain: list[str] = getattr(exc, "uncertain", [])
        for task_id in uncertain:  # `imgqueue result ID` tells: PENDING forever if it never went
            print(f"uncertain {task_id}", file=sys.stderr)
        if sent:
            # A prefix's objects are counted as they are listed: the total is not known.
            of_total = "" if any(map(is_prefix, sources)) else f" of {len(sources)}"
            group = getattr(exc, "group_id", None)
            if group is not None:
                print(f"group {group}", file=sys.stderr, flush=True)
            for task_id in sent:
                print(task_id, flush=True)
            print(
                f"{len(sent)}{of_total} job(s) were sent before the error; their ids "
                "are on stdout"
                + (
                    f" ({len(uncertain)} more may have been: 'uncertain' above)"
                    if uncertain
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )
        raise
    if not ids:
        print("error: no sources to submit: no image under the prefixes given", file=sys.stderr)
        return EXIT_USAGE
    group_id = getattr(ids, "group_id", None)
    if group_id is not None and not ns.wait:
        print(group_id, flush=True)  # its ids: `imgqueue results GROUP`
        return EXIT_OK
    if group_id is not None:
        print(f"group {group_id}", file=sys.stderr, flush=True)
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
        return EXIT_OK
    if not ns.ids and not ns.all:
        print(f"error: give dead-letter ids, or --all to {ns.action} every one", file=sys.stderr)
        return EXIT_USAGE
    ids = None if ns.all else ns.ids
    if ns.action == "requeue":
        done, problems = letters.requeue(ids)
    else:
        done, problems = letters.purge(ids)
    print(f"{ns.action}d {done}")
    for problem in problems:
        print(f"not {ns.action}d: {problem}", file=sys.stderr)
    return EXIT_JOB_FAILED if problems else EXIT_OK


def cmd_status(client: Client, ns: argparse.Namespace) -> int:
    from producer import status

    if ns.group is not None:
        return groups.cmd_status(client, ns)

    try:
        settings = load(ReportSettings)  # QUEUES, DEAD_WORKER_TIMEOUT
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    queues = [q for q in ns.queue or settings.queues if q]
    state = status.gather(
        client,
        queues,
        ns.timeout,
        settings.dead_worker_timeout,
        say=lambda line: print(f"status: {line}", file=sys.stderr, flush=True),
    )
    if ns.json:
        print(json.dumps(state, sort_keys=True))
    else:
        print(status.render(state))
    return EXIT_OK


def cmd_limits(client: Client, ns: argparse.Namespace) -> int:
    import redis

    from core.errors import BrokerUnavailable
    from producer import limits
    from producer.queues import depth

    r, config = client.redis, client.config
    try:
        if ns.action == "set":
            limits.set_limit(r, config, ns.queue, ns.limit)
            print(f"{ns.queue}: at most {ns.limit} messages waiting")
            return EXIT_OK
        if ns.action == "clear":
            had = limits.clear_limit(r, config, ns.queue)
            print(f"{ns.queue}: {'limit cleared' if had else 'had no limit'}")
            return EXIT_OK
        if ns.action == "get":
            queue = ns.queue or client.queue
            shown = {queue: limits.get_limit(r, config, queue)}
        else:
            shown = {q: limit for q, limit in limits.all_limits(r, config).items()}
        rows = {q: {"limit": n, "depth": depth(r, config, q)} for q, n in shown.items()}
    except redis.exceptions.NoPermissionError as exc:
        print(f"error: {exc} (queue limits are set by the admin user)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except redis.exceptions.OutOfMemoryError as exc:  # HSET on a full Redis
        raise client.full_error() from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {config.safe_url()}: {exc}") from exc
    if ns.json:
        print(json.dumps(rows if ns.action == "list" else rows[ns.queue or client.queue]))
        return EXIT_OK
    for name, row in rows.items():
        limit = "no limit" if row["limit"] is None else f"limit {row['limit']}"
        print(f"{name}: {limit}, {row['depth']} messages waiting")
    if not rows:
        print("no queue has a limit", file=sys.stderr)
    return EXIT_OK


# Each type= function raises ArgumentTypeError for any bad text: argparse prefixes it with the
# option as typed, where a bare ValueError (int("abc")) would name the function instead.


def _integer(text: str, low: int, high: int | None, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _limit(text: str) -> int:
    return _integer(text, 0, None, "a number of messages, 0 or more")


def _priority(text: str) -> int:
    expected = f"an integer within {MIN_PRIORITY} (highest) .. {MAX_PRIORITY} (lowest)"
    return _integer(text, MIN_PRIORITY, MAX_PRIORITY, expected)


def _top_k(text: str) -> int:
    try:
        return check_top_k(int(text))
    except ValueError:  # int()'s, or the contract's ArgumentError: in the CLI's words
        raise argparse.ArgumentTypeError(
            f"expected an integer within 1..{MAX_TOP_K}, got {text!r}"
        ) from None


def _webhook(text: str) -> str:
    try:
        return check_webhook(text)
    except InvalidWebhook as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bulk_size(text: str) -> int:
    return _integer(text, 1, MAX_BULK_IMAGES, f"an integer within 1..{MAX_BULK_IMAGES}")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it has none (None, a flag's False) or
    the help places it itself (`%(default)s`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.option_strings or action.nargs in ("?", "*")
        if (
            "%(default)" in text
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.nargs == 0
            or not shown
        ):
            return action.help
        return f"{text} (default: %(default)s)"


class _TopFormatter(argparse.RawDescriptionHelpFormatter, _DefaultsFormatter):
    """The top level's: its description (the module doc) as written."""


class _Parser(argparse.ArgumentParser):
    """`imgqueue`'s parser; add_subparsers makes every subcommand's of this class too, so each
    --help shows the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgqueue", description=__doc__, formatter_class=_TopFormatter)
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

    r = sub.add_parser("result", help="print results (JSON lines) for task ids")
    r.add_argument("ids", nargs="+", help="task ids, or - for stdin")
    r.add_argument("--wait", action="store_true", help="wait until each job has ended")
    r.add_argument("--timeout", type=float, default=None, help="seconds to wait for all")
    r.add_argument("--progress", action="store_true", help="progress bar even off a terminal")
    r.set_defaults(func=cmd_result)

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

    st = sub.add_parser(
        "status",
        help="queues (depth, in flight), workers, dead letters, recent throughput; or a "
        "group's counts, progress and ETA",
    )
    st.add_argument(
        "group", nargs="?", default=None, help="a group id: that group's counts, progress, ETA"
    )
    st.add_argument(
        "--queue", action="append", help="a queue to show even with no worker (default $QUEUES)"
    )
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument(
        "--timeout",
        type=float,
        default=1.5,
        help="seconds to wait for the next worker's answer; it stops waiting once every "
        "worker with a fresh heartbeat has answered",
    )
    st.set_defaults(func=cmd_status)

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
    add_cancel(sub, expand_sources)
    add_batch(sub, _top_k, _priority, _bulk_size, served_name)
    add_results(sub)
    add_events(sub)
    add_model(sub)
    add_keys(sub)
    add_render(sub)  # offline: needs no Redis
    add_serve(sub)  # offline: the gateway makes its own clients
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    client: Client | None = None
    try:
        if getattr(ns, "offline", None) is not None:
            code: int = ns.offline(ns)
        else:
            client = Client(
                ns.redis_url,
                sentinel_master=ns.sentinel_master,
                key_prefix=ns.key_prefix,
                result_url=ns.result_url,
                result_sentinel_master=ns.result_sentinel_master,
            )
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
        status = status_for(exc)
        if status is None:
            raise  # a bug: its traceback is what helps
        print(f"error: {_explain(exc, client)}", file=sys.stderr)
        return status


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
