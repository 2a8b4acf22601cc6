"""A fixed-latency stand-in for ResNet-50 (`MODEL=sleep:50ms`), for benchmarks and tests only.

It measures the queue, not the CPU: a batch "infers" by sleeping, so throughput scaling across
worker processes shows what Celery and Redis add. Its results say plainly that they are fake.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image

from worker.errors import ConfigError
from worker.model.prediction import Prediction

NUM_CLASSES = 1000


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
        self.device = torch.device("cpu")
        self.categories = [f"class {i}" for i in range(NUM_CLASSES)]
        self._input = torch.zeros(3, 1, 1)  # every image's: the pixels are unused

    @property
    def weights_id(self) -> str:
        return "none"

    @property
    def shrink_size(self) -> int | None:
        return 16  # its preprocess ignores the pixels: send few, cheaply

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

    def preprocess_encoded(self, data: bytes) -> torch.Tensor | None:
        return None

    def decode_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        return [None] * len(datas)

    def launch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.infer(batch)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.latency)
        return torch.full((batch.shape[0], NUM_CLASSES), 1.0 / NUM_CLASSES)

    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> list[Prediction]:
        return [Prediction(i, self.categories[i], float(probabilities[i])) for i in range(top_k)]

    def warm_up(self, batch_size: int = 1) -> None:
        pass
