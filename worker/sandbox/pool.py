"""Decoding in a pool of separate processes, each under a memory limit and a deadline.

Image parsers build state per structure while they read (a TIFF strip table, PNG chunks, JPEG
markers, GIF extensions); measured on a 50 MB file, Pillow took 8 to 45 s and 0.5 to 1.7 GB
just to open some of them, holding the GIL. In the worker's own process no limit can stop
that. Here (the approach of imgproxy and Thumbor):

- each decode runs in one of DECODE_PROCESSES child processes (worker/sandbox/child.py), whose
  address space is capped at DECODE_MEMORY_LIMIT: an image needing more fails as TooLarge;
- the header must be read within DECODE_TIMEOUT, the pixels within that plus
  DECODE_SECONDS_PER_MEGAPIXEL per megapixel; the child's own timer ends it past that, and
  the job fails as DecodeTimeout;
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
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import BufferTooShort
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from worker import errors
from worker.fetch import Fetched
from worker.imaging import Cropped, Decoded

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# How long past a request's longest possible deadline the worker waits for a child that has
# neither answered nor ended itself (stopped, say) before killing it.
_GRACE = 2.0


@dataclass(frozen=True)
class Limits:
    processes: int
    memory_limit: int  # bytes of address space per child
    timeout: float  # to read the header
    seconds_per_megapixel: float

    def longest(self, pixels: int) -> float:
        """The deadline of an image of `pixels`."""
        return self.timeout + self.seconds_per_megapixel * pixels / 1e6


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

    def ended(self) -> int | None:
        """Its exit status once it has ended by itself (negative: the signal), else None."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(1)
        return None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class DecodePool:
    """The children of one worker process (see module doc). Thread-safe."""

    def __init__(
        self,
        limits: Limits,
        around_request: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        """`around_request` wraps each round trip to a child, holding it (on the CPU: in
        the gap between forward passes, worker/gap.py)."""
        self.limits = limits
        self.around_request = around_request or contextlib.nullcontext
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(limits.processes)
        self._closed = False
        self._children: set[_Child] = set()
        for _ in range(limits.processes):
            self._idle.put(self._spawn())

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
        request = {"op": "decode", "draft_size": draft_size, "resize": resize}
        decoded = _uncropped(self._decode(request, source, max_pixels, allowed_formats))
        if isinstance(decoded, errors.ClassifyError):
            raise decoded
        return decoded

    def decode_cropped(
        self,
        source: Fetched | bytes,
        *,
        max_pixels: int,
        allowed_formats: tuple[str, ...],
        draft_size: int | None,
        resize: int,
        crop: int,
    ) -> Decoded | Cropped:
        """`decode`, then centre-cropped to `crop` x `crop` by the decode process as the
        transforms would (worker.imaging.center_crop): only the model's input crosses back.
        Decoded, as `decode` gives it, where the image is smaller than the crop."""
        request = {"op": "decode", "draft_size": draft_size, "resize": resize, "crop": crop}
        return self._decode(request, source, max_pixels, allowed_formats)

    def _decode(
        self,
        request: dict[str, Any],
        source: Fetched | bytes,
        max_pixels: int,
        allowed_formats: tuple[str, ...],
    ) -> Decoded | Cropped:
        decoded = _decoded(*self._run_one(request, source, max_pixels, allowed_formats))
        if isinstance(decoded, errors.ClassifyError):
            raise decoded
        return decoded

    def decode_many(
        self,
        sources: list[Fetched],
        *,
        max_pixels: int,
        allowed_formats: tuple[str, ...],
        draft_size: int | None,
        resize: int | None,
    ) -> list[Decoded | errors.ClassifyError]:
        """`decode` for several images in one round trip to one child (bulk messages), each
        under its own deadline. Should the child die on one of them, they are decoded again
        one at a time, so that only the culprit fails."""
        options = {"draft_size": draft_size, "resize": resize}
        try:
            answers = self._run({"op": "decode", **options}, sources, max_pixels, allowed_formats)
        except (_ChildDied, errors.DecodeTimeout):
            log.warning("a decode process ended during %d images: one at a time", len(sources))
            return [self._decode_or_error(s, max_pixels, allowed_formats, options) for s in sources]
        return [_uncropped(_decoded(reply, pixels)) for reply, pixels in answers]

    def _decode_or_error(
        self,
        source: Fetched,
        max_pixels: int,
        allowed_formats: tuple[str, ...],
        options: dict[str, Any],
    ) -> Decoded | errors.ClassifyError:
        try:
            return self.decode(
                source, max_pixels=max_pixels, allowed_formats=allowed_formats, **options
            )
        except errors.ClassifyError as exc:
            return exc

    def probe(
        self, data: bytes, *, max_pixels: int, allowed_formats: tuple[str, ...]
    ) -> Decoded | None:
        """The header checks only (for decoders other than Pillow), or None."""
        reply, _ = self._run_one({"op": "probe"}, data, max_pixels, allowed_formats)
        if reply[0] == "none":
            return None
        if reply[0] != "probed":
            raise _error(reply)
        _, width, height, fmt = reply
        return Decoded(Image.new("RGB", (1, 1)), width, height, fmt)

    def pids(self) -> list[int]:
        """The decode processes now running (for tests and operators)."""
        return [c.pid for c in list(self._children) if c.alive()]

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._retire(self._idle.get_nowait())
            except queue.Empty:
                return

    # -- plumbing ----------------------------------------------------------------------------

    def _run_one(
        self,
        request: dict[str, Any],
        source: Fetched | bytes,
        max_pixels: int,
        allowed_formats: tuple[str, ...],
    ) -> tuple[tuple[Any, ...], bytearray]:
        """`_run` for one image, whose fault it is when the child dies: its deadline ended it
        (DecodeTimeout), or it crashed (NotAnImage)."""
        try:
            [answer] = self._run(request, [source], max_pixels, allowed_formats)
        except _ChildDied as exc:
            if exc.code == -signal.SIGALRM:
                raise _timed_out(self.limits) from None
            raise errors.NotAnImage(
                f"the image decoder crashed on this image ({_how(exc.code)})"
            ) from exc.__cause__
        return answer

    def _run(
        self,
        request: dict[str, Any],
        sources: Sequence[Fetched | bytes],
        max_pixels: int,
        allowed_formats: tuple[str, ...],
    ) -> list[tuple[tuple[Any, ...], bytearray]]:
        """One request for `sources` to a free child (waiting for one), each image under its
        own deadline: each one's reply and pixels. DecodeTimeout when the child stays silent
        past them all (stopped, say), _ChildDied when it ends."""
        self._prepare(request, max_pixels, allowed_formats)
        request["count"] = len(sources)
        with self._slot() as (child, keep), self.around_request():
            try:
                child.conn.send(request)
                for source in sources:  # the holders, not their bytes, stay in this frame
                    child.conn.send_bytes(source.data if isinstance(source, Fetched) else source)
                if not child.conn.poll(len(sources) * self.limits.longest(max_pixels) + _GRACE):
                    raise _timed_out(self.limits)
                replies, recycle = child.conn.recv()
                pixels = [_receive(child.conn, reply, max_pixels) for reply in replies]
            except (EOFError, OSError, BufferTooShort) as exc:
                raise _ChildDied(child.ended()) from exc
            keep[0] = not recycle  # it grew too big and exits by itself: replace it
        return list(zip(replies, pixels, strict=True))

    def _prepare(
        self, request: dict[str, Any], max_pixels: int, allowed_formats: tuple[str, ...]
    ) -> None:
        request.update(
            max_pixels=max_pixels,
            formats=allowed_formats,
            timeout=self.limits.timeout,
            per_mp=self.limits.seconds_per_megapixel,
        )

    @contextlib.contextmanager
    def _slot(self) -> Iterator[tuple[_Child, list[bool]]]:
        """A child to talk to, waiting while all are busy. It goes back to the pool unless
        the request failed or `keep[0]` was cleared; then a fresh one takes its place."""
        self._slots.acquire()
        child: _Child | None = None
        keep = [True]
        try:
            try:
                child = self._idle.get_nowait()
                if not child.alive():  # died while idle (an outside OOM kill, say)
                    self._retire(child)
                    child = self._spawn()
            except queue.Empty:
                child = self._spawn()  # in place of one a failure retired
            yield child, keep
        except BaseException:
            keep[0] = False
            raise
        finally:
            if child is not None:
                if keep[0] and not self._closed:
                    self._idle.put(child)
                else:
                    self._retire(child)
            self._slots.release()

    def _spawn(self) -> _Child:
        fresh = _Child(self.limits)
        self._children.add(fresh)
        return fresh

    def _retire(self, child: _Child) -> None:
        self._children.discard(child)
        child.kill()


class _ChildDied(Exception):
    """Raised when a decode process ends in the middle of a request; `code`: its exit status
    (negative: the signal), None when it has not ended after all."""

    def __init__(self, code: int | None) -> None:
        super().__init__(_how(code))
        self.code = code


def _timed_out(limits: Limits) -> errors.DecodeTimeout:
    return errors.DecodeTimeout(
        f"decoding took longer than its deadline (DECODE_TIMEOUT={limits.timeout:g}s plus "
        f"DECODE_SECONDS_PER_MEGAPIXEL={limits.seconds_per_megapixel:g}s per megapixel): the "
        "image is too costly to decode"
    )


def _receive(conn: Connection, reply: tuple[Any, ...], max_pixels: int) -> bytearray:
    """A "done" reply's pixels, straight into a buffer of the size it declares (a buffer the
    model's input is then read from without another copy); OSError for anything else."""
    if reply[0] != "done":
        return bytearray()
    width, height = reply[4]
    if not 0 < width * height <= max_pixels:
        raise OSError(f"a decode process declared {width}x{height} pixels")
    buffer = bytearray(width * height * 3)
    if conn.recv_bytes_into(buffer) != len(buffer):
        raise OSError(f"a decode process sent other than {width}x{height} RGB pixels")
    return buffer


def _decoded(reply: tuple[Any, ...], pixels: bytearray) -> Decoded | Cropped | errors.ClassifyError:
    """A "done" reply's image (Cropped where the child cut the crop), else its error."""
    if reply[0] != "done":
        return _error(reply)
    _, width, height, fmt, size, cropped = reply
    if cropped and size[0] == size[1]:
        return Cropped(pixels, size[0], width, height, fmt)
    return Decoded(Image.frombytes("RGB", size, pixels), width, height, fmt)


def _uncropped(result: Decoded | Cropped | errors.ClassifyError) -> Decoded | errors.ClassifyError:
    """A result of a request that asked for no crop."""
    if isinstance(result, Cropped):
        return errors.InternalError("a decode process cropped an image it was not asked to")
    return result


def _error(reply: tuple[Any, ...]) -> errors.ClassifyError:
    if reply[0] != "error":
        return errors.InternalError(f"unexpected reply from a decode process: {reply[0]!r}")
    _, kind, message = reply
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
