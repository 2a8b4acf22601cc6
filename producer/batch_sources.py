"""The sources of a batch (`imgqueue batch SOURCE...`), each at a stable index.

A SOURCE is a manifest (a file of one source per line, blank lines skipped; `-` reads stdin,
spooled to a file beside the batch's own so that a resumed batch reads the same lines), a
directory (its images, IMAGE_EXTENSIONS, walked depth-first with each directory's files and
then its subdirectories in name order, symbolic links to directories not followed), or an
object-store prefix (`s3://bucket/images/`: its images in the store's lexicographic listing
order, core.objects.iter_objects). Over the same inputs the order is the same at every
run: a source's index is its place in it, and its job's id `<batch>-<index>`.

Nothing is held whole: a manifest is read line by line, a directory one directory at a time,
a prefix a page at a time. A directory's sources are named as `imgqueue submit DIR` names them
(`DIR/sub/a.jpg`, as DIR was typed), paths a worker resolves under its IMAGE_ROOT.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from core import objects
from core.contract import IMAGE_EXTENSIONS, source_problem
from core.errors import BatchConflict

MANIFEST, DIRECTORY, PREFIX = "manifest", "directory", "prefix"


@dataclass(frozen=True)
class Spec:
    """One SOURCE: `given` as typed, its `kind`, and `path`: where it is read (an absolute
    path, so that a batch resumed from another directory reads the same; a prefix's URL)."""

    given: str
    kind: str
    path: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Spec:
        return cls(str(raw["given"]), str(raw["kind"]), str(raw["path"]))


def resolve(args: list[str], stdin: TextIO, spool: Path) -> list[Spec]:
    """Each SOURCE's Spec; `-` spools stdin to `spool` (once: a second `-` is refused).
    BatchConflict for a SOURCE that is none of the three."""
    specs: list[Spec] = []
    for arg in args:
        if arg == "-":
            if any(s.given == "-" for s in specs):
                raise BatchConflict("`-` (stdin) may be given once")
            spool_stdin(stdin, spool)
            specs.append(Spec("-", MANIFEST, str(spool.resolve())))
        elif objects.is_prefix(arg):
            specs.append(Spec(arg, PREFIX, arg))
        elif "://" in arg:
            raise BatchConflict(
                f"{arg!r}: a SOURCE is a manifest file, a directory or an object-store prefix "
                "(a URL ending in '/'); put single URLs in a manifest"
            )
        elif os.path.isdir(arg):
            specs.append(Spec(arg, DIRECTORY, os.path.abspath(arg)))
        elif os.path.isfile(arg):
            specs.append(Spec(arg, MANIFEST, os.path.abspath(arg)))
        else:
            raise BatchConflict(f"{arg!r}: no such manifest file or directory")
    return specs


def spool_stdin(stdin: TextIO, spool: Path) -> None:
    """stdin's lines into `spool`, whole before it is named (a temporary file renamed)."""
    partial = spool.with_name(spool.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for line in stdin:
            out.write(line if line.endswith("\n") else line + "\n")
    os.replace(partial, spool)


def iter_sources(specs: list[Spec]) -> Iterator[str]:
    """Every source of every SOURCE, in index order."""
    for spec in specs:
        if spec.kind == MANIFEST:
            yield from _lines(spec.path)
        elif spec.kind == DIRECTORY:
            yield from _walk(spec.path, spec.given)
        else:
            yield from objects.iter_objects(spec.path, suffixes=IMAGE_EXTENSIONS)


def count(specs: list[Spec]) -> int | None:
    """How many sources there are, read once more (for a progress bar's ETA); None where a
    prefix is among them (listing a store twice costs requests)."""
    if any(spec.kind == PREFIX for spec in specs):
        return None
    return sum(1 for _ in iter_sources(specs))


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as manifest:
        for line in manifest:
            source = line.strip()
            if source:
                yield source


def _walk(root: str, given: str) -> Iterator[str]:
    shown = str(Path(given))
    stack = [(root, "" if shown == "." else shown + os.sep)]
    while stack:
        path, label = stack.pop()
        with os.scandir(path) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((entry.path, label + entry.name + os.sep))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                yield label + entry.name
        stack.extend(reversed(subdirs))


def problem(source: str) -> str | None:
    """Why a source cannot be sent as one job (its row says so), or None: outside the contract
    (core.contract.source_problem), or a prefix among a manifest's lines."""
    if objects.is_prefix(source):
        return "an object-store prefix names many objects: give it as a SOURCE of its own"
    return source_problem(source)


class Feed:
    """The sources one at a time with their index, and a digest of those handed out so far:
    a resumed batch compares it with the one its journal recorded, so that a changed manifest
    or directory is refused rather than mixed up (the ids name indices)."""

    def __init__(self, sources: Iterator[str], done: Callable[[int], bool]) -> None:
        self._sources = sources
        self._done = done
        self._hash = hashlib.blake2b(digest_size=16)
        self.index = 0  # the next source's
        self.exhausted = False

    def take(self, wanted: int) -> list[tuple[int, str]]:
        """Up to `wanted` sources not done yet (those done are hashed and skipped)."""
        out: list[tuple[int, str]] = []
        while len(out) < wanted and not self.exhausted:
            item = self.next()
            if item is not None and not self._done(item[0]):
                out.append(item)
        return out

    def next(self) -> tuple[int, str] | None:
        """The next source, done or not; None once there are no more."""
        source = next(self._sources, None)
        if source is None:
            self.exhausted = True
            return None
        self._hash.update(source.encode("utf-8", "surrogatepass") + b"\n")
        index, self.index = self.index, self.index + 1
        return index, source

    def digest(self) -> str:
        return self._hash.hexdigest()
