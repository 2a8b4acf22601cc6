"""The per-process resources: settings, the loaded model and its batcher.

`prepare` runs in the worker's main process before any fork (files only, never CUDA);
`start` runs once per process that executes tasks, after the fork for prefork pools.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass

from worker.batcher import Batcher
from worker.model import ImageModel, build_model
from worker.model.weights import WeightsSource, resolve
from worker.sandbox.pool import DecodePool, default_limits
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    classifier: ImageModel
    batcher: Batcher
    load_seconds: float
    decoder: DecodePool | None = None  # None: DECODE_SANDBOX=false, decode in this process

    def enter_task_thread(self) -> None:
        """Once per task thread, before its first torch op: keep it to one intra-op thread.

        Every thread that runs a parallel torch op gets its own OpenMP team, and those teams
        slowed the inference thread's forward pass from 50 to 75-90 ms (batch 1, 2 cores).
        The inference thread set its own thread count at setup, so this leaves it alone.
        """
        if not getattr(_task_thread, "ready", False):
            import torch

            torch.set_num_threads(1)
            _task_thread.ready = True


_lock = threading.Lock()
_task_thread = threading.local()
_weights: WeightsSource | None = None
_runtime: Runtime | None = None


def prepare(settings: Settings) -> WeightsSource | None:
    """Check (and download into the cache) the configured weights; raises WeightsUnavailable."""
    global _weights
    if settings.model.startswith("sleep:"):
        log.warning("MODEL=%s: a stand-in model, results are not real", settings.model)
        return None
    _weights = resolve(settings.model_weights, settings.preprocess)
    if _weights.pretrained is False:
        log.warning(
            "MODEL_WEIGHTS=%s: RANDOM WEIGHTS, labels are meaningless; results say so",
            settings.model_weights,
        )
    return _weights


def start(settings: Settings) -> Runtime:
    """Load the model once for this process, warm it up, and start its batcher."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        started = time.perf_counter()
        source = _weights
        if source is None and not settings.model.startswith("sleep:"):
            source = resolve(settings.model_weights, settings.preprocess)
        loaded: list[ImageModel] = []
        import torch

        threads = torch.get_num_threads()

        def load() -> None:
            # On the inference thread: an OpenMP thread team made by another thread (here,
            # the main one) made every later forward pass ~1.8x slower (docs/performance.md).
            torch.set_num_threads(threads)
            model = build_model(
                settings.model, source, settings.device, settings.precision, settings.gpu_decode
            )
            model.warm_up()
            # oneDNN and cuDNN pick kernels per shape: pay for the full batch shape now too.
            model.warm_up(settings.effective_batch_size)
            loaded.append(model)

        batches = itertools.count(1)
        fatal_after = settings.test_fatal_inference_after

        def infer(batch: torch.Tensor) -> torch.Tensor:
            if fatal_after and next(batches) >= fatal_after:
                raise SystemError("TEST_FATAL_INFERENCE_AFTER: a simulated fatal error (tests)")
            return loaded[0].infer(batch)

        batcher = Batcher(
            infer,
            settings.effective_batch_size,
            settings.max_batch_delay_ms / 1000.0,
            setup=load,
        )
        classifier = loaded[0]
        batcher.device = classifier.device
        decoder = None
        if settings.decode_sandbox:
            decoder = DecodePool(
                default_limits(
                    settings.decode_processes,
                    settings.decode_memory_limit,
                    settings.decode_timeout,
                    settings.decode_seconds_per_megapixel,
                )
            )
        load_seconds = time.perf_counter() - started
        _runtime = Runtime(settings, classifier, batcher, load_seconds, decoder)
        log.info(
            "model ready: %s weights=%s device=%s precision=%s batch<=%d in %.1fs",
            classifier.name,
            classifier.weights_id,
            classifier.device,
            classifier.precision,
            batcher.max_batch_size,
            _runtime.load_seconds,
        )
        return _runtime


def current() -> Runtime | None:
    """This process's runtime if its model is loaded (the main process of a prefork pool has
    none)."""
    return _runtime


def get(settings: Settings) -> Runtime:
    """The process's runtime, started on first use if no startup hook ran (e.g. other pools)."""
    return _runtime or start(settings)


def stop() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.batcher.stop()
            if _runtime.decoder is not None:
                _runtime.decoder.close()
            _runtime = None
