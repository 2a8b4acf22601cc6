"""What `imgqueue batch` tells a person: a progress bar with rate and ETA while it runs, and a
summary at the end (rows by state, failures by error type, the first failures themselves).

Both go to a text stream (stderr); the rows themselves are in the output file only.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

# Failures the summary quotes one by one; the rest are counted (every one is a row).
SHOWN_FAILURES = 20
# The bar is redrawn at most this often: a million rows must not be a million writes.
_REDRAW_S = 0.2


@dataclass
class Failure:
    index: int
    source: str
    error_type: str
    message: str


@dataclass
class Tally:
    """Rows written so far: counts by state and by error type, and the first failures."""

    by_state: Counter[str] = field(default_factory=Counter)
    by_error: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.by_state.values())

    @property
    def failed(self) -> int:
        return self.rows - self.by_state["SUCCESS"]

    def add(self, state: str, index: int, source: str, error: dict[str, Any] | None) -> None:
        self.by_state[state] += 1
        if state == "SUCCESS":
            return
        error_type = str((error or {}).get("type") or state)
        self.by_error[error_type] += 1
        if len(self.failures) < SHOWN_FAILURES:
            message = str((error or {}).get("message") or "")
            self.failures.append(Failure(index, source, error_type, message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_state": dict(self.by_state),
            "by_error": dict(self.by_error),
            "failures": [vars(f) for f in self.failures],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Tally:
        return cls(
            Counter(raw.get("by_state", {})),
            Counter(raw.get("by_error", {})),
            [Failure(**f) for f in raw.get("failures", [])],
        )


def summary(tally: Tally, out: str, seconds: float | None = None) -> str:
    """The end-of-batch lines: rows and rate, counts by state, failures by error type."""
    states = ", ".join(f"{n} {state}" for state, n in sorted(tally.by_state.items()))
    rate = f" in {seconds:.1f}s ({tally.rows / seconds:.1f}/s)" if seconds else ""
    lines = [f"batch: {tally.rows} rows in {out}{rate}: {states or 'none'}"]
    if tally.failed:
        kinds = ", ".join(f"{error} {n}" for error, n in tally.by_error.most_common())
        lines.append(f"batch: {tally.failed} failed: {kinds}")
        for failure in tally.failures:
            message = f": {failure.message}" if failure.message else ""
            lines.append(f"  {failure.source}  {failure.error_type}{message}")
        if tally.failed > len(tally.failures):
            lines.append(
                f"  ... and {tally.failed - len(tally.failures)} more: the rows whose state is "
                "not SUCCESS"
            )
    return "\n".join(lines)


class Progress:
    """A one-line bar on `stream`: rows done of the total (when known), failures, rate over
    this run, and an ETA from that rate. Drawn only when enabled (a terminal, or asked)."""

    def __init__(self, stream: TextIO, enabled: bool, total: int | None, done: int) -> None:
        self.stream, self.enabled, self.total = stream, enabled, total
        self.start_rows = done
        self.start = self._drawn = time.monotonic()

    def update(self, tally: Tally, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < _REDRAW_S):
            return
        self._drawn = now
        rows = tally.rows
        rate = (rows - self.start_rows) / max(now - self.start, 1e-9)
        if self.total:
            width = 30
            filled = width * min(rows, self.total) // self.total
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {rows}/{self.total}"
            left = (self.total - rows) / rate if rate > 0 else None
            eta = "  ETA " + _clock(left) if left is not None else ""
        else:
            bar, eta = f"{rows} rows", ""
        self.stream.write(f"\r{bar}  {tally.failed} failed  {rate:.1f}/s{eta}  ")
        self.stream.flush()

    def close(self, tally: Tally) -> None:
        if self.enabled:
            self.update(tally, force=True)
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
