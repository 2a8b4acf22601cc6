"""Decoding in a pool of separate processes, each under a memory limit and a deadline.

Image parsers build state per structure while they read (a TIFF strip table, PNG chunks, JPEG
markers, GIF extensions); measured on a 50 MB file, Pillow took 8 to 45 s and 0.5 to 1.7 GB
just to open some of them, holding the GIL. In the worker's own process no limit can stop
that. Here (the approach of imgproxy and Thumbor):

- each decode runs in one of DECODE_PROCESSES child processes (worker/sandbox/child.py), whose
  address space is capped at DECODE_MEMORY_LIMIT: an image needing more fails as TooLarge;
- the header must be read within DECODE_TIMEOUT, the pixels within that plus
  DECODE_SECONDS_PER_MEGAPIXEL per megapixel; past it the child is killed (DecodeTimeout);
- the children are the memory budget: a job finding them all busy waits for one, it does not
  fail, so concurrent huge images cannot run the worker out of memory;
- a child that crashes takes only its own job with it (NotAnImage), and is replaced;
- the child shrinks the image to the transforms' resize size, so the worker process never
  holds a full-size decoded image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from worker import errors
from worker.fetch import Fetched
from worker.imaging import Decoded

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    processes: int
    memory_limit: int  # bytes of address space per child
    timeout: float  # to read the header
    seconds_per_megapixel: float


class _Child:
    """One decode process: a fresh interpreter (never a fork of this threaded process, and
    possible from a prefork pool's daemonic children, where multiprocessing refuses)."""

    def __init__(self, limits: Limits) -> None:
        ours, theirs = socket.socketpair()
        recycle = max(256 * MIB, limits.memory_limit // 4)
        code = f"from worker.sandbox.child import serve; serve({theirs.fileno()}, "
        code += f"{limits.memory_limit}, {recycle})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(theirs.fileno(),), close_fds=True
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exitcode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class DecodePool:
    """The children of one worker process (see module doc). Thread-safe."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(limits.processes)
        self._closed = False
        self._children: set[_Child] = set()
        for _ in range(limits.processes):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Child:
        fresh = _Child(self.limits)
        self._children.add(fresh)
        return fresh

    def pids(self) -> list[int]:
        """The decode processes now running (for tests and operators)."""
        return [c.pid for c in list(self._children) if c.alive()]

    def decode(
        self,
        source: Fetched | bytes,
        *,
        max_pixels: int,
        allowed_formats: tuple[str, ...],
        draft_size: int | None,
        resize: int | None,
    ) -> Decoded:
        """Decoded and shrunk to `resize` (the shorter side), or a named error.

        Pass the Fetched holder rather than its bytes where they are large: then no frame of
        a failed job's traceback keeps them alive.
        """
        request = {
            "op": "decode",
            "max_pixels": max_pixels,
            "formats": allowed_formats,
            "draft_size": draft_size,
            "resize": resize,
            "deadline": self._budget(max_pixels),
        }
        with self._child() as (worker, fail):
            reply = self._ask(worker, fail, request, source, self.limits.timeout)
            if reply[0] == "header":
                _, width, height, _fmt = reply
                reply = self._wait(worker, fail, self._budget(width * height))
            if reply[0] == "done":
                _, width, height, fmt, size, recycle = reply
                pixels = worker.conn.recv_bytes()
                self._maybe_recycle(worker, fail, recycle)
                return Decoded(Image.frombytes("RGB", size, pixels), width, height, fmt)
            raise self._error(worker, fail, reply)

    def probe(
        self, data: bytes, *, max_pixels: int, allowed_formats: tuple[str, ...]
    ) -> Decoded | None:
        """The header checks only (for decoders other than Pillow), or None."""
        request = {
            "op": "probe",
            "max_pixels": max_pixels,
            "formats": allowed_formats,
            "deadline": self.limits.timeout,
        }
        with self._child() as (worker, fail):
            reply = self._ask(worker, fail, request, data, self.limits.timeout)
            if reply[0] == "probed":
                _, width, height, fmt, recycle = reply
                self._maybe_recycle(worker, fail, recycle)
                return Decoded(Image.new("RGB", (1, 1)), width, height, fmt)
            if reply[0] == "none":
                self._maybe_recycle(worker, fail, reply[-1])
                return None
            raise self._error(worker, fail, reply)

    def _budget(self, pixels: int) -> float:
        return self.limits.timeout + self.limits.seconds_per_megapixel * pixels / 1e6

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._retire(self._idle.get_nowait())
            except queue.Empty:
                return

    def _retire(self, worker: _Child) -> None:
        self._children.discard(worker)
        worker.kill()

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _child(self) -> Iterator[tuple[_Child, list[bool]]]:
        """A child to talk to; waits while all are busy. `fail[0] = True` retires it."""
        self._slots.acquire()
        worker: _Child | None = None
        fail = [False]
        try:
            try:
                worker = self._idle.get_nowait()
                if not worker.alive():  # died while idle (an outside OOM kill, say)
                    self._retire(worker)
                    worker = self._spawn()
            except queue.Empty:
                worker = self._spawn()  # in place of one a failure retired
            yield worker, fail
        except (EOFError, OSError, BrokenPipeError) as exc:
            fail[0] = True
            code = worker.exitcode() if worker is not None else None
            raise errors.NotAnImage(
                f"the image decoder crashed on this image ({_how(code)})"
            ) from exc
        finally:
            if worker is not None:
                if fail[0] or self._closed:
                    self._retire(worker)
                else:
                    self._idle.put(worker)
            self._slots.release()

    def _ask(
        self,
        worker: _Child,
        fail: list[bool],
        request: dict[str, Any],
        source: Fetched | bytes,
        budget: float,
    ) -> tuple[Any, ...]:
        worker.conn.send(request)
        worker.conn.send_bytes(source.data if isinstance(source, Fetched) else source)
        return self._wait(worker, fail, budget)

    def _wait(self, worker: _Child, fail: list[bool], budget: float) -> tuple[Any, ...]:
        started = time.monotonic()
        if not worker.conn.poll(budget):
            fail[0] = True
            raise errors.DecodeTimeout(
                f"decoding took longer than its {budget:.1f}s deadline (DECODE_TIMEOUT, "
                "DECODE_SECONDS_PER_MEGAPIXEL); the image is too costly to decode"
            )
        reply: tuple[Any, ...] = worker.conn.recv()
        log.debug("decode child answered %s in %.3fs", reply[0], time.monotonic() - started)
        return reply

    def _maybe_recycle(self, worker: _Child, fail: list[bool], recycle: bool) -> None:
        if recycle:
            fail[0] = True  # it exits by itself; a fresh one takes its place

    def _error(self, worker: _Child, fail: list[bool], reply: tuple[Any, ...]) -> Exception:
        self._maybe_recycle(worker, fail, bool(reply[-1]))
        if reply[0] != "error":
            fail[0] = True
            return errors.InternalError(f"unexpected reply from a decode process: {reply[0]!r}")
        _, kind, message, _recycle = reply
        cls = getattr(errors, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.ClassifyError)):
            cls = errors.NotAnImage
        return cls(message)


def _how(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


def default_limits(
    processes: int, memory_limit: int, timeout: float, per_megapixel: float
) -> Limits:
    """Settings of 0 sized from the machine: a child per core (at most 8), and a quarter of
    the memory shared among them (between 512 MiB and 4 GiB each)."""
    cores = os.cpu_count() or 1
    count = processes or max(1, min(8, cores))
    if not memory_limit:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_limit = max(512 * MIB, min(4096 * MIB, total // 4 // count))
    return Limits(count, memory_limit, timeout, per_megapixel)
