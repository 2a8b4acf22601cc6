"""A batch's files: its journal (`FILE.batch`) and its rows (an append-only JSON-lines file).

The journal is one small JSON object, replaced whole (a temporary file renamed over it): the
batch id, the SOURCEs, the job options, and two marks, `sending` (every index below it may
have been sent: written before a send) and `sent` (every index below it was: written after).
A resumed batch sends again, under the same ids, only the indices between the two.

The rows file holds one JSON object per line, `{"id": "<batch>-<index>", "state": ...,
"source": ..., "result"|"error": ...}`, appended a group at a time as jobs end. After a kill,
a torn last line (a write cut short) is cut off; every whole line is a source done. Files
survive a killed process (the kernel holds what was written); nothing here is fsync'ed, so a
power loss is not covered.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import BatchConflict
from producer.batch_report import Tally

FORMAT = 1
OUTPUT_SUFFIXES = (".jsonl", ".parquet")
# A row's head, as producer.batch_rows writes it: enough to know its index and state unparsed.
_HEAD = re.compile(rb'\{"id": "([^"\\]+)", "state": "([A-Z_]+)"')


@dataclass(frozen=True)
class Paths:
    """Where a batch keeps its files. `out` is the output as given (a local path or an object
    URL); `rows` the working JSON-lines file (the output itself for a local .jsonl)."""

    out: str
    rows: Path
    journal: Path
    stdin: Path
    is_local: bool

    @property
    def is_parquet(self) -> bool:
        return self.out.lower().endswith(".parquet")


def paths_for(out: str) -> Paths:
    """A local FILE keeps FILE.batch and FILE.stdin beside it (and FILE.partial.jsonl for a
    .parquet); an object URL keeps them in the current directory, named from the URL's hash."""
    from core import objects

    if not out.lower().endswith(OUTPUT_SUFFIXES):
        raise BatchConflict(f"--out {out!r}: the output must end in .jsonl or .parquet")
    if objects.is_object_url(out):
        base = Path.cwd() / f"imgqueue-batch-{hashlib.sha256(out.encode()).hexdigest()[:16]}"
        return Paths(
            out, _with(base, ".jsonl"), _with(base, ".batch"), _with(base, ".stdin"), False
        )
    local = Path(out).absolute()
    rows = _with(local, ".partial.jsonl") if local.suffix.lower() == ".parquet" else local
    return Paths(str(local), rows, _with(local, ".batch"), _with(local, ".stdin"), True)


def _with(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


@dataclass
class Journal:
    """The batch's parameters and progress marks, as stored in `FILE.batch`."""

    batch: str
    out: str
    sources: list[dict[str, str]]
    options: dict[str, Any]
    sending: int = 0
    sent: int = 0
    fingerprint: str = ""  # producer.batch_sources.Feed.digest() of the sources below `sending`
    total: int | None = None  # known once every source was read
    finished: bool = False  # every row written; the output converted or uploaded
    summary: dict[str, Any] = field(default_factory=dict)  # Tally.to_dict() once finished
    format: int = FORMAT

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BatchConflict(f"no batch to resume: {path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise BatchConflict(f"{path} is not a batch journal: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise BatchConflict(f"{path} is not a batch journal of format {FORMAT}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class Scan:
    """What a rows file holds: which indices are done, the tally, and the ids of its last
    rows (whose result keys may not have been deleted yet when the batch was killed)."""

    done: bytearray = field(default_factory=bytearray)
    tally: Tally = field(default_factory=Tally)
    tail: deque[str] = field(default_factory=deque)


def index_of(task_id: str, batch: str) -> int | None:
    """The index a batch's task id names; None for another's id."""
    head, sep, tail = task_id.rpartition("-")
    if not sep or head != batch or not tail.isdigit():
        return None
    return int(tail)


def mark(done: bytearray, index: int) -> None:
    if index >= len(done):
        done.extend(bytes(index + 1 - len(done) + len(done) // 2))
    done[index] = 1


def is_done(done: bytearray, index: int) -> bool:
    return index < len(done) and done[index] == 1


def recover(path: Path, batch: str, keep_tail: int) -> Scan:
    """Cut a torn last line off the rows file, then read it: BatchConflict for a line that is
    not one of this batch's rows, or a source written twice."""
    scan = Scan(tail=deque(maxlen=keep_tail))
    if not path.exists():
        return scan
    with path.open("r+b") as rows:
        size = rows.seek(0, os.SEEK_END)
        end = _whole_lines_end(rows, size)
        if end < size:
            rows.truncate(end)
    with path.open("rb") as rows:
        for number, line in enumerate(rows, 1):
            _read_row(line, number, batch, path, scan)
    return scan


def _whole_lines_end(rows: Any, size: int) -> int:
    """Where the last whole line ends (0: none), read backwards a block at a time."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        rows.seek(start)
        cut: int = rows.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _read_row(line: bytes, number: int, batch: str, path: Path, scan: Scan) -> None:
    head = _HEAD.match(line)
    row: dict[str, Any] | None = None
    if head is None or head.group(2) != b"SUCCESS":
        try:
            row = json.loads(line)
        except ValueError:
            raise BatchConflict(f"{path}:{number}: not a JSON row") from None
    task_id = head.group(1).decode() if head else str((row or {}).get("id", ""))
    index = index_of(task_id, batch)
    if index is None:
        raise BatchConflict(f"{path}:{number}: a row of another batch ({task_id!r})")
    if is_done(scan.done, index):
        raise BatchConflict(f"{path}:{number}: a second row for index {index}")
    mark(scan.done, index)
    scan.tail.append(task_id)
    if row is None:
        scan.tally.add("SUCCESS", index, "", None)
    else:
        error = row.get("error")
        state = str(row.get("state", ""))
        scan.tally.add(state, index, str(row.get("source", "")), error)


class Rows:
    """The rows file, opened to append: each group of rows is one write, straight to the
    kernel (no buffer of ours to lose). Locked while open (flock, released by the kernel
    however the process ends): a second batch on the same file is refused, not interleaved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab", buffering=0)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise BatchConflict(f"another imgqueue batch is writing {path}") from None

    def append(self, lines: list[bytes]) -> None:
        data = memoryview(b"".join(lines))
        while data:  # a regular file takes it whole, unless the process is being killed
            data = data[self._file.write(data) or 0 :]

    def close(self) -> None:
        self._file.close()
