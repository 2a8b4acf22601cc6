"""What one worker process holds, in one object instead of module globals.

worker/lifecycle.py builds it, in the worker's main process and again in every forked pool
child, which starts with fresh metrics and loads its own model. Tasks reach it as
`task.app.context`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from worker.deliveries import Gate
from worker.metrics import Metrics
from worker.settings import Settings

if TYPE_CHECKING:  # the model side; a context exists before the model is wanted
    from worker.model.spec import ModelSpec
    from worker.runtime import Runtime


def configure_openmp(environ: os._Environ[str] | dict[str, str] | None = None) -> None:
    """Shorten OpenMP's idle spinning; must run before anything imports torch.

    OpenMP (GNU libgomp, as in torch's wheels) reads these once, when torch loads it. An idle
    OpenMP thread spins ~300,000 times (a few ms) before it sleeps, on the cores the task
    threads need for decoding the next batch: int8 1024x768, one worker on 2 cores, 48 -> 57
    img/s with 10,000 (docs/performance.md). But the spinning must outlast the serial gaps
    inside one forward pass, or the team sleeps and wakes dozens of times per pass, which on a
    VM that idled a second took a lone job's bf16 pass from 20 to 55 ms: 30,000
    spins (0.36 ms on a Xeon) bridge them without costing throughput measurably, 10,000 and
    20,000 did not. Setting either variable yourself leaves both to you.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = "30000"


@dataclass
class Context:
    settings: Settings
    main_pid: int  # the worker's main process: what the ready file names, also in children
    metrics: Metrics = field(default_factory=Metrics)
    gate: Gate = field(default_factory=Gate)  # suspect jobs run alone (worker/deliveries.py)
    ready: threading.Event = field(default_factory=threading.Event)
    weights: ModelSpec | None = None  # the model, checked in the main process before any fork
    runtime: Runtime | None = None  # the model, its batcher and decoders, once loaded
    # Where Redis refuses writes for lack of memory: "broker" (fetches), "results" (stores).
    full: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def is_ready(self) -> bool:
        """Ready for jobs: the model is loaded and Redis takes this worker's writes."""
        return self.ready.is_set() and not self.full

    def redis_full(self, store: str, full: bool) -> None:
        """Redis refused (or took again) a write: no new jobs while results cannot be stored."""
        with self._lock:
            if full:
                self.full.add(store)
            else:
                self.full.discard(store)
        self.metrics.redis_full.labels(store=store).set(1 if full else 0)

    def fetch_paused(self) -> bool:
        return "results" in self.full

    def forked(self) -> Context:
        """The context of a pool child: the same settings and weights, nothing else shared."""
        return Context(self.settings, self.main_pid, weights=self.weights)

    def load(self, start: Callable[[], Runtime]) -> Runtime:
        """The process's model: `start()` the first time (thread-safe), then the same one."""
        with self._lock:
            if self.runtime is None:
                self.runtime = start()
            return self.runtime

    def close(self) -> None:
        with self._lock:
            if self.runtime is not None:
                self.runtime.stop()
                self.runtime = None
        self.metrics.shutdown()
