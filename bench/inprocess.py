"""In-process measurements: the ceiling, the seed tutorial's loop, and model-only batch sweeps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from worker.imaging import decode
from worker.model.classifier import Classifier
from worker.model.spec import resolve_model
from worker.settings import DEFAULT_FORMATS

WEIGHTS = "random:0"


def load(precision: str, device: str = "cpu", backend: str = "torch") -> Classifier:
    return Classifier(resolve_model(weights=WEIGHTS), device, precision, backend=backend)


@contextmanager
def _timer(out: list[float]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    out.append(time.perf_counter() - started)


def ceiling(model: Classifier, paths: list[Path], batch_size: int, draft: bool) -> float:
    """Images/s for decode + reference transforms + batched inference, one process, no queue."""

    def run(chunk: list[Path]) -> None:
        tensors = []
        for path in chunk:
            size = model.resize_size if draft else None
            decoded = decode(
                path.read_bytes(), max_pixels=64_000_000, allowed_formats=DEFAULT_FORMATS,
                draft_size=size,
            )  # fmt: skip
            tensors.append(model.preprocess(decoded.image))
        probabilities = model.infer(torch.stack(tensors))
        for row in probabilities:
            model.postprocess(row, 5)

    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    run(chunks[0])  # warm-up: kernels for this batch shape
    elapsed: list[float] = []
    with _timer(elapsed):
        for chunk in chunks:
            run(chunk)
    return len(paths) / elapsed[0]


def seed_loop(paths: list[Path]) -> float:
    """Images/s the seed tutorial's way: fp32, Pillow, the weights' transforms, one at a time."""
    from PIL import Image
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50().eval()
    preprocess = ResNet50_Weights.IMAGENET1K_V2.transforms()

    def one(path: Path) -> None:
        batch = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            torch.softmax(model(batch), dim=1).topk(5)

    one(paths[0])
    elapsed: list[float] = []
    with _timer(elapsed):
        for path in paths:
            one(path)
    return len(paths) / elapsed[0]


def batch_sweep(
    model: Classifier,
    sizes: list[int],
    repeats: int = 3,
    settle: Callable[[], object] | None = None,
) -> dict[int, float]:
    """Model-only seconds per batch, for each batch size (median of `repeats`); `settle` runs
    before each size (bench.quiet.wait_quiet on a shared machine)."""
    out = {}
    for size in sizes:
        if settle is not None:
            settle()
        batch = torch.randn(size, 3, model.input_size, model.input_size)
        model.infer(batch)
        times: list[float] = []
        for _ in range(repeats):
            with _timer(times):
                model.infer(batch)
        out[size] = sorted(times)[len(times) // 2]
    return out
