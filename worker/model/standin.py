"""A fixed-latency stand-in for ResNet-50 (`MODEL=sleep:50ms`), for benchmarks and tests only.

It measures the queue, not the CPU: a batch "infers" by sleeping, so throughput scaling across
worker processes shows what Celery and Redis add. Its results say plainly that they are fake.

It never imports torch (3-4 s of CPU per process start): images are still fetched and decoded
as for a real model, but what it hands the batcher and gets back are placeholders (`Rows`),
typed as tensors for the ImageModel interface. The batcher only stacks them (`stack`), moves
them to the CPU and takes rows; `postprocess` reads a row's numbers.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, Any, cast

from worker.errors import ConfigError
from worker.model.prediction import Prediction

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from worker.imaging import Cropped

NUM_CLASSES = 1000


def is_standin(model: str) -> bool:
    """MODEL names the stand-in: `sleep:<latency>`."""
    return model.startswith("sleep:")


def parse_latency(spec: str) -> float:
    """`sleep:50ms` or `sleep:0.05s` to seconds."""
    text = spec.split(":", 1)[1].strip().lower() if ":" in spec else ""
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000.0
        if text.endswith("s"):
            return float(text[:-1])
        return float(text) / 1000.0
    except ValueError:
        raise ConfigError(f"MODEL={spec!r}: expected sleep:<milliseconds>ms") from None


class Rows:
    """`count` rows of NUM_CLASSES probabilities, each 1/NUM_CLASSES: a batch of the stand-in's
    inputs and its outputs alike, with what the batcher uses of a tensor."""

    # 1/NUM_CLASSES rounded to float32, as the torch tensors it gave before said it
    ROW = struct.unpack("f", struct.pack("f", 1.0 / NUM_CLASSES)) * NUM_CLASSES

    def __init__(self, count: int) -> None:
        self.shape = (count, NUM_CLASSES)

    def cpu(self) -> Rows:
        return self

    def __getitem__(self, row: int) -> tuple[float, ...]:
        if not -self.shape[0] <= row < self.shape[0]:
            raise IndexError(row)
        return self.ROW


class _Cpu:
    """The stand-in's device: what `torch.device("cpu")` says of itself, without torch."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"


def stack(inputs: list[torch.Tensor]) -> torch.Tensor:
    """The batcher's `stack` for the stand-in: its inputs (`Rows(1)` each) as one batch."""
    return cast("torch.Tensor", Rows(len(inputs)))


class SleepModel:
    """Same interface as Classifier; each batch takes a fixed time, whatever its size."""

    resize_size = 16  # draft decoding may shrink as far as libjpeg can: the pixels are unused
    input_size = 1
    load_seconds = 0.0

    def __init__(self, spec: str, name: str = "") -> None:
        self.spec = spec
        self.latency = parse_latency(spec)
        self.served_name = name
        self.name = name or spec
        self.precision = "none"
        self.backend = "none"
        self.device = cast("torch.device", _Cpu())
        self.categories = [f"class {i}" for i in range(NUM_CLASSES)]
        self._input = cast("torch.Tensor", Rows(1))  # every image's: the pixels are unused

    @property
    def weights_id(self) -> str:
        return "none"

    @property
    def shrink_size(self) -> int | None:
        return 16  # its preprocess ignores the pixels: send few, cheaply

    @property
    def crop_size(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "name": self.served_name,
            "arch": self.spec,
            "version": None,
            "weights": "none",
            "labels": None,
            "pretrained": False,
            "preprocess": "none",
            "precision": self.precision,
            "device": "cpu",
            "backend": "none",
            "warning": "stand-in model for benchmarks and tests: predictions are not real",
        }

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._input

    def preprocess_cropped(self, cropped: Cropped) -> torch.Tensor:
        return self._input

    def preprocess_encoded(self, data: bytes) -> torch.Tensor | None:
        return None

    def decode_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        return [None] * len(datas)

    def launch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.infer(batch)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.latency)
        return cast("torch.Tensor", Rows(batch.shape[0]))

    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> list[Prediction]:
        return [Prediction(i, self.categories[i], float(probabilities[i])) for i in range(top_k)]

    def warm_up(self, batch_size: int = 1) -> None:
        pass
