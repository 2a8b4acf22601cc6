"""The CUDA paths: fp16 on the GPU and nvJPEG decode. Skipped where no GPU is visible (CI);
run on a lent device machine by scripts/device-check.sh."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support.paths import SAMPLES
from worker.model.classifier import Classifier, pick_device, pick_precision
from worker.model.spec import resolve_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

PHOTOS = sorted(SAMPLES.glob("*.jpg"))


def _top5(row: torch.Tensor) -> set[int]:
    return set(row.topk(5).indices.tolist())


def _pillow_batch(model: Classifier, paths: list[Path]) -> torch.Tensor:
    return torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths])


def test_auto_picks_the_gpu_and_fp16() -> None:
    device = pick_device("auto")
    assert device.type == "cuda"
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    assert pick_precision("auto", device) == "fp16"


@pytest.mark.parametrize("arch", ["squeezenet1_1", "convnext_tiny"])
def test_other_architectures_run_on_the_gpu_too(arch: str) -> None:
    spec = resolve_model(arch=arch, weights="random:0")
    cpu = Classifier(spec, "cpu", "fp32")
    gpu = Classifier(spec, "cuda", "fp16", gpu_decode=True)
    assert gpu.describe()["arch"] == arch and gpu.describe()["device"] == "cuda:0"
    batch = _pillow_batch(cpu, PHOTOS)
    ref, out = cpu.infer(batch), gpu.infer(batch)
    assert torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3)
    assert torch.allclose(out, ref, atol=2e-3)  # random heads: probabilities near 1/1000


def test_fp16_on_the_gpu_stays_close_to_fp32_on_the_cpu() -> None:
    cpu = Classifier(resolve_model(weights="random:0"), "cpu", "fp32")
    gpu = Classifier(resolve_model(weights="random:0"), "cuda", "auto")
    assert gpu.describe()["device"] == "cuda:0" and gpu.describe()["precision"] == "fp16"
    batch = _pillow_batch(cpu, PHOTOS)
    ref, out = cpu.infer(batch), gpu.infer(batch)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3)
    for got, want in zip(out, ref, strict=True):
        assert len(_top5(got) & _top5(want)) >= 4


def test_nvjpeg_decode_matches_pillow_closely() -> None:
    model = Classifier(resolve_model(weights="random:0"), "cuda", "fp16", gpu_decode=True)
    for path in PHOTOS:
        on_gpu = model.preprocess_encoded(path.read_bytes())
        assert on_gpu is not None, f"{path.name}: GPU decode fell back to Pillow"
        on_cpu = model.preprocess(Image.open(path).convert("RGB"))
        assert on_gpu.shape == on_cpu.shape == (3, 224, 224)
        # Different decoders and a tensor resize: close, not identical.
        assert float((on_gpu.cpu() - on_cpu).abs().mean()) < 0.05, path.name


def test_gpu_decode_falls_back_for_non_jpeg() -> None:
    model = Classifier(resolve_model(weights="random:0"), "cuda", "fp16", gpu_decode=True)
    assert model.preprocess_encoded(b"\x89PNG\r\n\x1a\n" + b"\0" * 64) is None


def test_batched_gpu_decode_through_the_batcher_with_a_pillow_fallback() -> None:
    """JPEG bytes decoded a batch at a time on the inference thread, overlapped with the
    forward pass; what nvJPEG cannot decode fails with GpuDecodeFailed for Pillow to take."""
    from worker.batcher import Batcher, GpuDecodeFailed

    model = Classifier(resolve_model(weights="random:0"), "cuda", "fp16", gpu_decode=True)
    batcher = Batcher(
        model.launch, max_batch_size=8, max_delay=0.05, decode_encoded=model.decode_batch,
        device=model.device,
    )  # fmt: skip
    try:
        assert batcher.accepts_encoded
        with batcher.upcoming():
            futures = [batcher.submit_encoded(p.read_bytes()) for p in PHOTOS]
            bad = batcher.submit_encoded(b"\xff\xd8 not a jpeg")
        reference = model.infer(_pillow_batch(model, PHOTOS))
        for future, want in zip(futures, reference, strict=True):
            row, size = future.result(30)
            assert size == len(PHOTOS) and row.device.type == "cpu"
            assert len(_top5(row) & _top5(want)) >= 4
        with pytest.raises(GpuDecodeFailed):
            bad.result(30)
    finally:
        batcher.stop()
