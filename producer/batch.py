"""Batch jobs: every source of manifests, directories or object-store prefixes through the
workers, one output row each, surviving a kill at any moment (`imgqueue batch`; docs/batch.md).

- Each source has a stable index (producer/batch_sources.py) and its job the id
  `<batch>-<index>`, so a resumed batch knows what it sent and sends nothing twice but the one
  group a kill may have cut between the send and its journal mark (producer/batch_state.py).
  A job sent twice runs at most once more; its row is written once.
- At most a window of jobs is queued at a time; each row is appended to the rows file as its
  job ends, then its result key is deleted (producer/batch_loop.py): Redis holds the window,
  not the batch.
- A finished batch's rows become Parquet, or go to an object store (producer/batch_output.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from core.contract import DEFAULT_TOP_K
from core.errors import BatchConflict
from producer.batch_loop import Loop
from producer.batch_output import check_parquet, object_exists, to_parquet, upload
from producer.batch_report import Progress, Tally
from producer.batch_rows import Ended, unlink_results
from producer.batch_sources import Feed, Spec, count, iter_sources, problem, resolve
from producer.batch_state import Journal, Paths, Rows, is_done, paths_for, recover
from producer.batch_window import MAX_IN_FLIGHT, Window
from producer.client import DEFAULT_BULK_SIZE, Client


@dataclass(frozen=True)
class Options:
    """The jobs' options, as `Client.submit_many` takes them; stored in the journal, so that a
    resumed batch sends alike."""

    top_k: int = DEFAULT_TOP_K
    queue: str | None = None
    model: str | None = None
    priority: int | None = None
    bulk_size: int = DEFAULT_BULK_SIZE

    def job_options(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Batch:
    paths: Paths
    journal: Journal
    resumed: bool


def open_batch(
    out: str,
    sources: list[str],
    options: Options | None,
    *,
    resume: bool,
    stdin: TextIO,
) -> Batch:
    """The batch writing `out`: its own, found again (with `resume`, or when `sources` and
    `options` are those it began with), or a new one. BatchConflict where `out` (or a file the
    batch would write beside it) exists and is not this batch's, and for a batch to resume
    that is not there; nothing is written then. `options` None: the stored ones (resume)."""
    paths = paths_for(out)
    if paths.is_parquet:
        check_parquet()
    if paths.journal.exists():
        journal = Journal.load(paths.journal)
        given = [s.given for s in map(Spec.from_dict, journal.sources)]
        same = sources == given and "-" not in sources
        if options is not None and options.job_options() != journal.options:
            same = False
        if not resume and not same:
            raise BatchConflict(
                f"{out} belongs to batch {journal.batch} (sources {given}, options "
                f"{journal.options}): `imgqueue batch --resume {out}` goes on with it; remove "
                f"{out} and {paths.journal} to begin anew"
            )
        if resume and sources and not same:
            raise BatchConflict(
                f"--resume {out}: the batch's sources and options are {given}, "
                f"{journal.options}; give none, or the same"
            )
        return Batch(paths, journal, True)
    if resume:
        raise BatchConflict(f"no batch to resume at {out}: {paths.journal} does not exist")
    if not sources:
        raise BatchConflict("give at least one SOURCE: a manifest, a directory or a prefix")
    for path in (paths.rows, paths.stdin, paths.journal):
        if path.exists():
            raise BatchConflict(f"{path} exists and is not a batch's: refusing to overwrite it")
    if paths.is_local and paths.out != str(paths.rows) and os.path.lexists(paths.out):
        raise BatchConflict(f"{out} exists and is not a batch's: refusing to overwrite it")
    if not paths.is_local and object_exists(out):
        raise BatchConflict(f"{out} exists: refusing to overwrite it (choose another --out)")
    specs = resolve(sources, stdin, paths.stdin)
    opts = options or Options()
    journal = Journal(uuid.uuid4().hex, paths.out, [s.to_dict() for s in specs], opts.job_options())
    journal.save(paths.journal)
    return Batch(paths, journal, False)


def run_batch(
    client: Client,
    batch: Batch,
    *,
    in_flight: int | None = None,
    progress: TextIO | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Tally:
    """Run (or go on with) the batch until every source has its row, then write the output;
    returns the tally of every row. `in_flight`: the window (None: it adapts to the workers'
    speed, producer.batch_loop.Window). `progress`: a stream to draw a bar on. `say` is told,
    in a line, what the caller should know (results this Redis user may not delete)."""
    journal, paths = batch.journal, batch.paths
    if journal.finished:
        return Tally.from_dict(journal.summary)
    window = Window(in_flight, int(str(journal.options["bulk_size"])))
    rows = Rows(paths.rows)  # locked first: no other batch process cuts or appends meanwhile
    try:
        return _run(client, batch, window, rows, progress, say)
    finally:
        rows.close()


def _run(
    client: Client,
    batch: Batch,
    window: Window,
    rows: Rows,
    progress: TextIO | None,
    say: Callable[[str], None],
) -> Tally:
    journal, paths = batch.journal, batch.paths
    specs = [Spec.from_dict(s) for s in journal.sources]
    scan = recover(paths.rows, journal.batch, max(MAX_IN_FLIGHT, window.size))
    unlink_results(client, list(scan.tail))  # killed between a row and its key's deletion?
    done, tally = scan.done, scan.tally
    total = journal.total
    if progress is not None and total is None:
        total = count(specs)
    bar = None if progress is None else Progress(progress, True, total, tally.rows)

    def on_row(row: Ended) -> None:
        tally.add(row.state, row.index, row.source, row.error)
        if bar is not None:
            bar.update(tally)

    feed = Feed(iter_sources(specs), lambda index: is_done(done, index))
    try:
        loop = Loop(client, journal, paths.journal, rows, done, feed, window, on_row, say)
        resend = _resume(feed, journal, loop)
        loop.run(resend)
    finally:
        if bar is not None:
            bar.close(tally)
    journal.total = feed.index
    _finish(paths, journal, tally)
    return tally


def _resume(feed: Feed, journal: Journal, loop: Loop) -> list[tuple[int, str]]:
    """Read the sources up to the journal's `sending` mark: those below `sent` not done are in
    flight (their results are collected), those above it are sent again. BatchConflict when
    the sources are not those the batch began with."""
    resend: list[tuple[int, str]] = []
    while feed.index < journal.sending:
        item = feed.next()
        if item is None:
            break
        index, source = item
        if is_done(loop.done, index):
            continue
        if problem(source) is not None:
            resend.append(item)  # never sent: _fill's row for it was cut short
        elif index < journal.sent:
            loop.flying[index] = source
        else:
            resend.append(item)
    if journal.sending and (feed.index < journal.sending or feed.digest() != journal.fingerprint):
        raise BatchConflict(
            "the sources changed since the batch began (a manifest edited, images added or "
            "removed): a resumed batch needs the same sources in the same order"
        )
    invalid = [(i, s, p) for i, s in resend if (p := problem(s)) is not None]
    if invalid:
        loop.write_invalid(invalid)
    return [(i, s) for i, s in resend if problem(s) is None]


def _finish(paths: Paths, journal: Journal, tally: Tally) -> None:
    """Convert and upload where the output asks; then the journal says finished."""
    final = paths.rows
    if paths.is_parquet:
        final = paths.rows.with_name(paths.rows.name.removesuffix(".jsonl") + ".parquet")
        if paths.is_local:
            final = Path(paths.out)
        to_parquet(paths.rows, final, journal.total or 0)
    if not paths.is_local:
        upload(paths.out, final)
    journal.finished, journal.summary = True, tally.to_dict()
    journal.save(paths.journal)
    for leftover in {paths.rows, final, paths.stdin} - ({final} if paths.is_local else set()):
        leftover.unlink(missing_ok=True)
