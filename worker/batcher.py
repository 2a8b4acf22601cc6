"""A dynamic batcher, in the spirit of Triton's: many threads submit, one loop infers.

Task threads fetch, decode and preprocess concurrently, then hand their tensor to `submit`,
which returns a Future. One inference thread per process takes whatever is ready, up to
`max_batch_size`, waiting at most `max_delay` after the first item for others to arrive.

On CUDA, task threads may hand over JPEG bytes instead (`submit_encoded`): the inference thread
decodes the whole batch at once on the GPU (`decode_encoded`, on a side stream), and launches
the next batch's decode while the current forward pass runs, before it waits for its outputs.
An image the GPU cannot decode fails its future with GpuDecodeFailed: its task thread decodes
it with Pillow and submits the tensor.

Importing it loads no torch: the stand-in model's placeholders (worker/model/standin.py) pass
through with their own `stack`, and torch is imported where a batch of real tensors needs it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from worker.gap import DECODE_WAIT_S, Gap

log = logging.getLogger(__name__)

# How often a batch waiting for partners looks again whether any job is still on its way.
_RECHECK_S = 0.001

# A batch in, probabilities out: on the CPU, or on the GPU not yet synchronised (the batcher
# moves them to the CPU when it hands the rows out).
InferFn = Callable[["torch.Tensor"], "torch.Tensor"]
DecodeFn = Callable[[list[bytes]], list["torch.Tensor | None"]]
StackFn = Callable[[list["torch.Tensor"]], "torch.Tensor"]


class GpuDecodeFailed(Exception):
    """Raised when the GPU could not decode an image handed over as bytes: decode it on the CPU."""


class InferenceDead(Exception):
    """Raised when the inference thread has died (or hung): no batch will run in this process."""


def _sooner(when: float, deadline: float | None) -> float:
    """A batch's wait for partners ends at the first of its items' deadlines."""
    return when if deadline is None else min(when, deadline)


def is_fatal(exc: BaseException) -> bool:
    """Errors after which this process's model cannot be trusted to run another batch."""
    if not isinstance(exc, Exception) or isinstance(exc, MemoryError | SystemError):
        return True
    # A CUDA fault poisons the context: every later call fails too.
    return "CUDA error" in str(exc) or type(exc).__name__ == "AcceleratorError"


@dataclass
class _Item:
    tensor: torch.Tensor | None
    future: Future[tuple[torch.Tensor, int]] = field(default_factory=Future)
    encoded: bytes | None = None  # JPEG bytes for the inference thread to decode
    deadline: float | None = None  # monotonic: its batch runs by then, partners or not


class Batcher:
    """Collects single inputs into batches for one inference function."""

    def __init__(
        self,
        infer: InferFn,
        max_batch_size: int,
        max_delay: float,
        on_batch: Callable[[int, float], None] | None = None,
        device: torch.device | None = None,
        setup: Callable[[], None] | None = None,
        on_death: Callable[[BaseException], None] | None = None,
        decode_encoded: DecodeFn | None = None,
        overlap: bool | None = None,
        stack: StackFn | None = None,
    ) -> None:
        """`setup`, if given, runs first on the inference thread; its errors raise here.
        `stack` makes a batch's inputs one input (None: `torch.stack`, on `device`).

        After a fatal error (see `is_fatal`) the batcher is dead: every waiting and later
        submit fails with InferenceDead at once, and `on_death` is called once.
        """
        self.infer = infer
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay = max(0.0, max_delay)
        self.on_batch = on_batch
        self.on_death = on_death
        self.decode_encoded = decode_encoded
        self.stack = stack
        self._overlap = overlap  # None: on CUDA (see _run_overlapped)
        self._side_stream: Any = None  # CUDA only: where batches decode
        self.dead: BaseException | None = None
        self._death_lock = threading.Lock()
        self.device = device
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._stopped = False
        self._upcoming = 0  # jobs being fetched/decoded that will submit soon
        self._upcoming_lock = threading.Lock()
        # Set for a CPU model (worker/runtime.py): decoding stays out of its forward passes.
        self.gap: Gap | None = None
        self._setup = setup
        self._ready: Future[None] = Future()
        self._thread.start()
        self._ready.result()

    @property
    def accepts_encoded(self) -> bool:
        """True where JPEG bytes may be submitted as they are (a CUDA model with GPU decode)."""
        return self.decode_encoded is not None and self._on_cuda

    @property
    def _on_cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def submit(
        self, tensor: torch.Tensor, deadline: float | None = None
    ) -> Future[tuple[torch.Tensor, int]]:
        """Queue one preprocessed input; the future gives (its output row, the batch size).
        `deadline` (time.monotonic): the job's; a batch holding it never waits past it."""
        return self._put(_Item(tensor, deadline=deadline))

    def submit_encoded(
        self, data: bytes, deadline: float | None = None
    ) -> Future[tuple[torch.Tensor, int]]:
        """Queue JPEG bytes, decoded with their batch on the GPU (see module doc)."""
        return self._put(_Item(None, encoded=data, deadline=deadline))

    def _put(self, item: _Item) -> Future[tuple[torch.Tensor, int]]:
        with self._death_lock:  # so no item lands after the queue was failed at death
            if self.dead is not None:
                raise InferenceDead(f"the inference thread died: {self.dead!r}")
            if self._stopped:
                raise RuntimeError("batcher is stopped")
            self._queue.put(item)
        return item.future

    def declare_dead(self, exc: BaseException, items: list[_Item] | None = None) -> None:
        """Fail every waiting job and stop accepting new ones (also for a hung thread)."""
        with self._death_lock:
            if self.dead is not None:
                return
            self.dead = exc
            self._stopped = True
        error = InferenceDead(f"the inference thread died: {exc!r}")
        pending = list(items or [])
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        for item in pending:
            if not item.future.done():
                item.future.set_exception(error)
        log.critical("inference thread dead (%r): %d waiting job(s) failed", exc, len(pending))
        if self.on_death is not None:
            try:
                self.on_death(exc)
            except Exception:
                log.exception("on_death hook failed")

    @contextlib.contextmanager
    def upcoming(self) -> Iterator[None]:
        """Wrap a job's fetch, decode and `submit`: while none is upcoming and the queue is
        empty, a batch runs at once instead of waiting out the delay for partners."""
        with self._upcoming_lock:
            self._upcoming += 1
        try:
            yield
        finally:
            with self._upcoming_lock:
                self._upcoming -= 1

    def __call__(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.submit(tensor).result()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> list[_Item] | None:
        first = self._queue.get()
        if first is None:
            return None
        items = [first]
        now = time.monotonic()
        deadline = _sooner(now + self.max_delay, first.deadline)
        decoded_by = _sooner(now + DECODE_WAIT_S, first.deadline)  # jobs decoding in a gap
        while len(items) < self.max_batch_size:
            try:
                # Drain what is already there without waiting, then wait out the delay.
                item = self._queue.get_nowait()
            except queue.Empty:
                now = time.monotonic()
                if not self._partners_coming(now, deadline, decoded_by):
                    break
                try:
                    # In slices, looking at `upcoming` again: nothing lands in the queue when
                    # the last job on its way leaves it (it submitted just before, or failed).
                    item = self._queue.get(timeout=_RECHECK_S)
                except queue.Empty:
                    continue
            if item is None:
                self._queue.put(None)  # seen again after this batch, to stop the loop
                break
            items.append(item)
            deadline = _sooner(deadline, item.deadline)
            decoded_by = _sooner(decoded_by, item.deadline)
        return items

    def _partners_coming(self, now: float, deadline: float, decoded_by: float) -> bool:
        """Whether a batch waits on for partners: jobs on their way, up to MAX_BATCH_DELAY_MS;
        jobs decoding in the gap before this pass (worker/gap.py), up to DECODE_WAIT_S."""
        if self.gap is not None and self.gap.decoding and now < decoded_by:
            return True
        return self._upcoming > 0 and now < deadline

    def _stack(self, items: list[_Item]) -> torch.Tensor:
        # GPU-decoded inputs are already on the device; Pillow fallbacks are on the CPU.
        tensors = [i.tensor for i in items if i.tensor is not None]
        if self.stack is not None:
            return self.stack(tensors)
        import torch

        if self.device is None:
            return torch.stack(tensors)
        return torch.stack([t.to(self.device, non_blocking=True) for t in tensors])

    def _decode(self, items: list[_Item]) -> list[_Item]:
        """Decode the batch's encoded inputs at once; returns the items left to infer."""
        encoded = [i for i in items if i.encoded is not None]
        if not encoded:
            return items
        assert self.decode_encoded is not None
        datas = [i.encoded or b"" for i in encoded]
        if self._on_cuda:
            import torch

            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            with torch.cuda.stream(self._side_stream):
                tensors = self.decode_encoded(datas)
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._side_stream)  # the forward pass reads what it wrote
            for t in tensors:
                if t is not None:
                    t.record_stream(current)  # used there: not to be reused before
        else:
            tensors = self.decode_encoded(datas)
        for item, tensor in zip(encoded, tensors, strict=True):
            item.encoded = None
            if tensor is None:
                item.future.set_exception(GpuDecodeFailed("the GPU could not decode this image"))
            else:
                item.tensor = tensor
        return [i for i in items if i.tensor is not None]

    def _loop(self) -> None:
        try:
            if self._setup is not None:
                self._setup()
        except BaseException as exc:
            self._stopped = True
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            self._run()
        except BaseException as exc:  # anything outside a batch: the loop is gone
            self.declare_dead(exc)

    def _run(self) -> None:
        # Decided at the first batch: the device is known by the time anything is submitted.
        if (items := self._collect()) is None:
            return
        if self._on_cuda if self._overlap is None else self._overlap:
            self._run_overlapped(items)
        else:
            self._run_plain(items)

    def _run_plain(self, first: list[_Item]) -> None:
        items: list[_Item] | None = first
        while items is not None:
            started = time.perf_counter()
            try:
                items = self._decode(items)
                outputs = self._infer_closed(items) if items else None
            except BaseException as exc:
                if self._failed(exc, items):
                    return
                outputs = None
            if outputs is not None:
                self._deliver(items, outputs, started)
            items = self._collect()

    def _infer_closed(self, items: list[_Item]) -> torch.Tensor:
        """A forward pass on the CPU, with no decode starting meanwhile (worker/gap.py)."""
        batch = self._stack(items)
        if self.gap is None:
            return self.infer(batch)
        deadlines = [i.deadline for i in items if i.deadline is not None]
        with self.gap.closed(min(deadlines, default=None)):
            return self.infer(batch)

    def _run_overlapped(self, first: list[_Item]) -> None:
        """The CUDA loop: batch N+1 is collected and decoded while batch N's forward pass runs
        (the launch returns before the GPU is done; `_deliver` waits for it)."""
        in_flight: tuple[list[_Item], torch.Tensor, float] | None = None
        items: list[_Item] | None = first
        while True:
            launched = None
            if items:
                started = time.perf_counter()
                try:
                    items = self._decode(items)
                    if items:
                        launched = (items, self.infer(self._stack(items)), started)
                except BaseException as exc:
                    if self._failed(exc, items, in_flight[0] if in_flight else []):
                        return
            if in_flight is not None:
                try:
                    self._deliver(*in_flight)
                except BaseException as exc:
                    if self._failed(exc, in_flight[0], launched[0] if launched else []):
                        return
            in_flight = launched
            if items is None and in_flight is None:
                return  # stopped
            items = self._collect() if in_flight is None else self._collect_ready()
            if items is None and in_flight is None:
                return

    def _collect_ready(self) -> list[_Item] | None:
        """What is queued now, without waiting (a batch is in flight); [] when nothing."""
        items: list[_Item] = []
        while len(items) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                return items or None
            items.append(item)
        return items

    def _deliver(self, items: list[_Item], outputs: torch.Tensor, started: float) -> None:
        outputs = outputs.cpu()  # waits for the GPU; a no-op on the CPU
        for row, item in enumerate(items):
            item.future.set_result((outputs[row], len(items)))
        if self.on_batch is not None:
            self.on_batch(len(items), time.perf_counter() - started)

    def _failed(
        self, exc: BaseException, items: list[_Item], in_flight: list[_Item] | None = None
    ) -> bool:
        """A batch's error: True when fatal (the loop must end; `in_flight`, another batch
        not yet delivered, fails with it)."""
        if is_fatal(exc):
            self.declare_dead(exc, items + (in_flight or []))
            return True
        # An ordinary error belongs to this batch: handed to its waiters, and the loop
        # itself survives.
        log.exception("inference failed for a batch of %d", len(items))
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)
        return False
