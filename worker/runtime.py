"""The model side of a worker process: the loaded model, its batcher, its decoders.

`prepare` runs in the worker's main process before any fork (files only, never CUDA);
`start` runs once per process that executes tasks, after the fork for prefork pools
(worker/lifecycle.py). The process's Context (worker/context.py) holds the result; nothing
here is global. A real model's spec imports torch in `prepare`, before any fork; the stand-in
(`MODEL=sleep:...`) never imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from worker import cache, testing
from worker.batcher import Batcher
from worker.gap import Gap
from worker.model import ImageModel, build_model
from worker.model import standin as standin_model
from worker.model.card import served_name
from worker.sandbox.pool import DecodePool, default_limits
from worker.settings import Settings
from worker.uploads import Uploads

if TYPE_CHECKING:  # both import torch: the stand-in needs neither
    import torch

    from worker.model.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    classifier: ImageModel
    batcher: Batcher
    load_seconds: float
    decoder: DecodePool | None = None  # None: DECODE_SANDBOX=false, decode in this process
    # The result cache's, on the result store (None: RESULT_CACHE off, or the store was away)
    cache_client: redis.Redis | None = None
    # The broker's, for uploads (`upload:<id>` sources); None only where no job runs
    uploads: Uploads | None = None

    def enter_task_thread(self) -> None:
        """Once per task thread, before its first torch op: keep it to one intra-op thread.

        Every thread that runs a parallel torch op gets its own OpenMP team, and those teams
        slowed the inference thread's forward pass from 50 to 75-90 ms (batch 1, 2 cores).
        The inference thread set its own thread count at setup, so this leaves it alone.
        """
        if not getattr(_task_thread, "ready", False):
            if not standin_model.is_standin(self.settings.model):  # no torch op there
                import torch

                torch.set_num_threads(1)
            _task_thread.ready = True

    def stop(self) -> None:
        self.batcher.stop()
        if self.decoder is not None:
            self.decoder.close()
        if self.cache_client is not None:
            self.cache_client.close()
        if self.uploads is not None:
            self.uploads.close()


_task_thread = threading.local()


def prepare(settings: Settings) -> ModelSpec | None:
    """Resolve and check the configured model (downloading pretrained weights into the cache);
    raises ConfigError or WeightsUnavailable, saying what is wrong, before any job is taken."""
    if standin_model.is_standin(settings.model):
        log.warning("MODEL=%s: a stand-in model, results are not real", settings.model)
        return None
    from worker.model.spec import from_settings  # imports torch

    spec = from_settings(settings)
    if spec.weights.pretrained is False:
        log.warning(
            "MODEL_WEIGHTS=%s: RANDOM WEIGHTS, labels are meaningless; results say so",
            settings.model_weights,
        )
    return spec  # what it is, the worker logs once loaded (lifecycle.announce)


def start(
    settings: Settings,
    spec: ModelSpec | None = None,
    *,
    on_batch: Callable[[int, float], None] | None = None,
    on_death: Callable[[BaseException], None] | None = None,
) -> Runtime:
    """Load the model, warm it up, and start its batcher (once per process, after any fork:
    worker/lifecycle.py)."""
    started = time.perf_counter()
    standin = standin_model.is_standin(settings.model)
    if spec is None and not standin:
        from worker.model.spec import from_settings

        spec = from_settings(settings)
    model = _InferenceModel(settings, spec)
    batcher = Batcher(
        testing.fatal_inference(model.infer, settings),
        settings.effective_batch_size,
        settings.max_batch_delay_ms / 1000.0,
        on_batch=on_batch,
        setup=model.load,  # on the inference thread; its errors raise here
        on_death=on_death,
        # CUDA with GPU_DECODE: JPEG bytes go to the inference thread, decoded a batch at a
        # time (the batcher uses it only on a CUDA device).
        decode_encoded=model.decode if settings.gpu_decode else None,
        stack=standin_model.stack if standin else None,  # torch.stack otherwise
    )
    classifier = model.loaded
    batcher.device = classifier.device
    if classifier.device.type == "cpu" and batcher.max_batch_size > 1 and not standin:
        batcher.gap = Gap(settings.inference_timeout)  # decoding between passes
    decoder = None
    if settings.decode_sandbox:
        decoder = DecodePool(
            default_limits(
                settings.decode_processes,
                settings.decode_memory_limit,
                settings.decode_timeout,
                settings.decode_seconds_per_megapixel,
            ),
            around_request=batcher.gap.request if batcher.gap else None,
        )
    cache_client = cache.connect(settings) if cache.enabled(settings) else None
    load_seconds = time.perf_counter() - started
    # Said in one line by lifecycle.announce, once logging is set up.
    uploads = Uploads.connect(settings)
    return Runtime(settings, classifier, batcher, load_seconds, decoder, cache_client, uploads)


class _InferenceModel:
    """The model as the batcher's inference thread runs it: built there (`load`, the batcher's
    setup), then called there for every batch."""

    loaded: ImageModel  # once `load` ran

    def __init__(self, settings: Settings, spec: ModelSpec | None) -> None:
        self.settings = settings
        self.spec = spec
        self.name = served_name(settings.model_name, settings.model_card)
        self.threads: int | None = None  # the stand-in's: it runs no torch op
        if spec is not None:
            import torch

            self.threads = torch.get_num_threads()  # this (the main) thread's: OMP_NUM_THREADS

    def load(self) -> None:
        if self.threads is not None:
            import torch

            # On the inference thread: an OpenMP thread team made by another thread (here,
            # the main one) made every later forward pass ~1.8x slower (docs/performance.md).
            torch.set_num_threads(self.threads)
        settings = self.settings
        model = build_model(
            settings.model,
            self.spec,
            settings.device,
            settings.precision,
            settings.gpu_decode,
            self.name,
            settings.backend,
            settings.onnx_options,
        )
        model.warm_up()
        # oneDNN and cuDNN pick kernels per shape: pay for the full batch shape now too.
        model.warm_up(settings.effective_batch_size)
        self.loaded = model

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loaded.launch(batch)  # the batcher reads the outputs when it hands them out

    def decode(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        return self.loaded.decode_batch(datas)
