"""The gap between two forward passes on the CPU: where decoding runs, and what a batch waits for.

On a few cores a forward pass takes them all: OpenMP's and ONNX Runtime's thread teams split
each operator statically over their threads, so a decode process that takes a core from one of
them for a few milliseconds stalls the whole operator while the others wait (docs/performance.md,
*The worker's own cost per image*). So on the CPU a worker keeps its decoding out of its passes:

- a decode process is sent an image only in a gap (`request`, around each round trip to one);
- a pass starts once the images already sent are back (`closed`, around each pass), and no
  image is sent until it returns;
- a batch being formed in a gap waits for the jobs still decoding (`decoding_one`), up to
  DECODE_WAIT_S, instead of starting with the few already decoded while the others would wait
  for the next gap.

A gap that is never closed (on CUDA, where passes run on the GPU) costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

# How long a batch waits for jobs still being decoded when it could run, and a pass for the
# images already sent to decode processes: a batch of eight 4032x3024 photos decodes in ~55 ms
# on two cores; an image costlier than this to decode (a hostile one runs to its DECODE_TIMEOUT)
# joins a later batch instead of holding this one.
DECODE_WAIT_S = 0.1


class Gap:
    """Open, except while the inference thread runs a forward pass on the CPU. Thread-safe."""

    def __init__(self, max_wait: float) -> None:
        """`max_wait`: how long a decode waits for a pass at most (INFERENCE_TIMEOUT: a pass
        that takes longer is hung, and the job fails anyway)."""
        self.max_wait = max_wait
        self._changed = threading.Condition()
        self._passing = False  # a pass runs
        self._sent = 0  # round trips to decode processes under way
        self._decoding = 0

    @property
    def decoding(self) -> int:
        """Jobs now between the start of their decode and their submit (or failure)."""
        return self._decoding

    @contextlib.contextmanager
    def decoding_one(self) -> Iterator[None]:
        """Wrap a job's decode and preprocess: a batch being formed waits for it."""
        with self._changed:
            self._decoding += 1
        try:
            yield
        finally:
            with self._changed:
                self._decoding -= 1

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Wrap a round trip to a decode process: it starts once no pass runs."""
        with self._changed:
            self._changed.wait_for(lambda: not self._passing, self.max_wait)
            self._sent += 1
        try:
            yield
        finally:
            with self._changed:
                self._sent -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def closed(self, deadline: float | None = None) -> Iterator[None]:
        """Wrap a forward pass: it starts once the images sent to decode processes are back
        (DECODE_WAIT_S at most, and never past `deadline`, the batch's earliest job deadline
        on the time.monotonic clock), and none is sent until it returns (or fails)."""
        wait = DECODE_WAIT_S
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        with self._changed:
            self._passing = True
            self._changed.wait_for(lambda: self._sent == 0, wait)
        try:
            yield
        finally:
            with self._changed:
                self._passing = False
                self._changed.notify_all()
