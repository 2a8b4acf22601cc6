"""The loop of `imgqueue batch`: keep a window of jobs queued, write each as it ends, delete it.

Each turn sends more sources when the window has room (journal mark `sending` saved first,
`sent` after: producer/batch_state.py), then reads one result key per bulk message in flight
(`_poll`), the whole message's where that one has ended, appends the rows of the jobs that
ended to the rows file, and only then UNLINKs their result keys: a kill between the two leaves
keys that the next resume deletes, never a row short. Only final states are read (SUCCESS,
FAILURE, REVOKED); a job that has none yet is looked at again, however long it waits.

Polling, not the completion events stream: an event costs redis-py ~20 values to parse in
Python where the result, which the row needs anyway, is one (docs/batch.md has the figures).
Redis holds at most the window's jobs (messages and results) at a time, however many sources
the batch has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from core.connections import mget, result_store_errors
from core.errors import BrokerUnavailable, QueueFull
from core.states import FINAL_STATES
from producer.batch_rows import Ended, ended, finished, unlink_results
from producer.batch_sources import Feed, problem
from producer.batch_state import Journal, Rows, mark
from producer.batch_window import Window
from producer.client import Client, Outcome, parse_meta, route
from producer.queues import depth

_SEND_AT_MOST = 4096  # sources per submit_many call
_MGET_CHUNK = 500
# Completion by polling: again at once while jobs end, else after a pause growing from the
# shortest to the longest; every _SWEEP_S every job in flight is read.
_POLL_MIN_S, _POLL_MAX_S = 0.01, 0.1
_SWEEP_S = 3.0
# How the worker's JSON of a final state begins (`_is_final`).
_FINAL = tuple(f'{{"status": "{state}"'.encode() for state in sorted(FINAL_STATES))
_RECONNECT_S = 60.0  # Redis unreachable longer than this ends the run (resume later)
# No job of the batch ended for this long, none of those in flight has a state and their queue
# is empty: their results expired while no batch ran (RESULT_EXPIRES), or their messages were
# lost (a Redis without persistence restarted). They are sent again, under the same ids.
STALL_S = 120.0
# Redis away (the loop retries); not OSError: a full disk under the rows file is no outage.
_ERRORS: tuple[type[Exception], ...] = (
    *(e for e in result_store_errors() if e is not OSError),
    BrokerUnavailable,
)
_SEND_ERRORS: tuple[type[Exception], ...] = (QueueFull, *_ERRORS)


class Loop:
    def __init__(
        self,
        client: Client,
        journal: Journal,
        journal_path: Any,
        rows: Rows,
        done: bytearray,
        feed: Feed,
        window: Window,
        on_row: Callable[[Ended], None],
        say: Callable[[str], None],
    ) -> None:
        self.client, self.journal, self.journal_path = client, journal, journal_path
        self.rows, self.done, self.feed, self.window = rows, done, feed, window
        self.on_row, self.say = on_row, say
        self.prefix = journal.batch + "-"
        self.flying: dict[int, str] = {}  # sent, not ended: index -> source
        self.unsent: list[tuple[int, str]] = []  # journaled as sending, not sent yet
        self._hold_until = 0.0  # a full queue: send again after this
        self._may_unlink = True
        self._swept = time.monotonic()
        self.stall_s = STALL_S
        self._ended_at = time.monotonic()  # when a job last ended (or a stall was looked at)

    def run(self, resend: list[tuple[int, str]]) -> None:
        self.unsent = resend
        down_since: float | None = None
        reached = False  # Redis wrong from the start is an error at once, not a wait
        delay = _POLL_MIN_S
        while True:
            try:
                self._fill()
                if not self.flying and not self.unsent and self.feed.exhausted:
                    return
                if not self.flying:
                    time.sleep(0.1)  # a full queue or Redis away: only sends are waited on
                    continue
                ended = self._poll()
                if ended:
                    self._ended_at = time.monotonic()
                elif time.monotonic() - self._ended_at > self.stall_s:
                    self._stalled()
                down_since, reached = None, True
            except _ERRORS as exc:
                if not reached:
                    raise
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > _RECONNECT_S:
                    raise BrokerUnavailable(
                        f"Redis unreachable for {_RECONNECT_S:g}s: {exc}"
                    ) from exc
                time.sleep(0.5)
                continue
            if ended:
                delay = _POLL_MIN_S
                continue
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)

    def _poll(self) -> int:
        """Rows for the jobs that ended; returns how many. The jobs in flight, in the order
        sent, are cut in runs of a bulk message's size, and only the last of each run is
        read: the images of a message end together, so one key per message tells which to
        read whole, however many are in flight (the sweep catches an image slower than its
        message's last)."""
        order = list(self.flying)
        if time.monotonic() - self._swept >= _SWEEP_S:
            self._swept = time.monotonic()
            return self._collect(order)
        size = self.window.bulk_size
        runs = [order[i : i + size] for i in range(0, len(order), size)]
        probes = [run[-1] for run in runs]
        keys = [self.client.config.result_key(self.prefix + str(i)) for i in probes]
        raws = [
            raw
            for start in range(0, len(keys), _MGET_CHUNK)
            for raw in mget(self.client.results, keys[start : start + _MGET_CHUNK])
        ]
        ended = [run for run, raw in zip(runs, raws, strict=True) if _is_final(raw)]
        return self._collect([i for run in ended for i in run])

    # -- sending ---------------------------------------------------------------------------

    def _fill(self) -> None:
        if time.monotonic() < self._hold_until:
            return
        if self.unsent:
            self._send()
            return
        room = self.window.size - len(self.flying)
        # Whole bulk messages, and few enough sends that the journal's writes cost nothing.
        size = self.window.size
        if self.feed.exhausted or room < min(size, max(self.window.bulk_size, size // 16)):
            return
        taken = self.feed.take(min(room, _SEND_AT_MOST))
        invalid = [(i, s, p) for i, s in taken if (p := problem(s)) is not None]
        if invalid:
            self.write_invalid(invalid)
            taken = [(i, s) for i, s in taken if problem(s) is None]
        self.unsent = taken
        self.journal.sending, self.journal.fingerprint = self.feed.index, self.feed.digest()
        if self.feed.exhausted:
            self.journal.total = self.feed.index
        self.journal.save(self.journal_path)
        self._send()

    def _submit(self, items: list[tuple[int, str]]) -> None:
        options = self.journal.options
        self.client.submit_many(
            [s for _, s in items],
            task_ids=[self.prefix + str(i) for i, _ in items],
            top_k=options["top_k"],
            queue=options["queue"],
            model=options["model"],
            priority=options["priority"],
            bulk_size=options["bulk_size"],
        )

    def _send(self) -> None:
        items = self.unsent
        if items:
            try:
                self._submit(items)
            except _SEND_ERRORS as exc:
                went = set(getattr(exc, "sent", ()))
                self.flying.update((i, s) for i, s in items if self.prefix + str(i) in went)
                self.unsent = [(i, s) for i, s in items if self.prefix + str(i) not in went]
                if isinstance(exc, QueueFull):  # an operator's limit: wait, collecting results
                    self._hold_until = time.monotonic() + 1.0
                    return
                raise
            self.flying.update(items)
        self.unsent = []
        self.journal.sent = self.journal.sending
        self.journal.save(self.journal_path)

    def _stalled(self) -> None:
        """Send again the jobs in flight that have no state, where their queue is empty."""
        self._ended_at = time.monotonic()
        options = self.journal.options
        queue = route(
            options["queue"] or self.client.queue,
            options["model"],
            queue_given=bool(options["queue"]),
        )
        if depth(self.client.redis, self.client.config, queue):
            return  # they wait behind others' jobs, or no worker runs
        ids = [self.prefix + str(i) for i in self.flying]
        raws = mget(self.client.results, [self.client.config.result_key(t) for t in ids])
        lost = [(i, s) for (i, s), raw in zip(self.flying.items(), raws, strict=True) if not raw]
        if lost:
            self.say(
                f"{len(lost)} jobs in flight have no state and queue {queue!r} is empty: their "
                "results expired or their messages were lost; sending them again"
            )
            self._submit(lost)

    # -- collecting ------------------------------------------------------------------------

    def _collect(self, indices: list[int]) -> int:
        """Rows for those of the jobs that have ended; returns how many."""
        count = 0
        for start in range(0, len(indices), _MGET_CHUNK):
            chunk = [i for i in indices[start : start + _MGET_CHUNK] if i in self.flying]
            ids = [self.prefix + str(i) for i in chunk]
            raws = mget(self.client.results, [self.client.config.result_key(t) for t in ids])
            rows = [
                ended(i, t, self.flying[i], raw)
                for i, t, raw in zip(chunk, ids, raws, strict=True)
                if raw is not None
            ]
            count += self._write([row for row in rows if row is not None])
            self._fill()  # a long look must not leave the queue empty
        return count

    def write_invalid(self, items: list[tuple[int, str, str]]) -> None:
        """Rows for sources outside the contract (index, source, why), never sent: FAILURE,
        InvalidArguments, as a worker would have failed them."""
        self._write([finished(i, s, _invalid(self.prefix, i, why)) for i, s, why in items])

    def _write(self, rows: list[Ended]) -> int:
        """Rows first (one write), then the bookkeeping, then the result keys go."""
        if not rows:
            return 0
        self.rows.append([row.line for row in rows])
        for row in rows:
            mark(self.done, row.index)
            self.flying.pop(row.index, None)
            self.on_row(row)
        self.window.ended(len(rows))
        self._unlink([self.prefix + str(row.index) for row in rows])
        return len(rows)

    def _unlink(self, task_ids: list[str]) -> None:
        if task_ids and self._may_unlink and not unlink_results(self.client, task_ids):
            self._may_unlink = False
            self.say(
                "this Redis user may not delete results: they stay until RESULT_EXPIRES "
                "(docs/batch.md, Redis users)"
            )


def _is_final(raw: bytes | None) -> bool:
    """Whether a result key holds a final state, from its first bytes where they are the
    worker's usual JSON, else parsed."""
    if raw is None:
        return False
    return raw.startswith(_FINAL) or (not raw.startswith(b'{"status": "') and _parsed_final(raw))


def _parsed_final(raw: bytes) -> bool:
    try:
        return parse_meta("", raw).done
    except ValueError:
        return False


def _invalid(prefix: str, index: int, problem: str) -> Outcome:
    return Outcome(prefix + str(index), "FAILURE", None, "InvalidArguments", problem)
