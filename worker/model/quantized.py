"""int8 ResNet-50 for CPUs: torchvision's quantizable model, x86 backend (fbgemm + onednn).

Pretrained weights use torchvision's own quantized enum (calibrated by torchvision). A weights
file or `random:SEED` is quantized here, post-training, calibrated on a few sample images.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from worker.errors import WeightsUnavailable
from worker.model.spec import ModelSpec
from worker.model.weights import WeightsSource, load_state_dict

log = logging.getLogger(__name__)

BACKEND = "x86"
# The quantized enum that matches each float enum (same training recipe and transforms).
QUANTIZED_ENUMS = {"IMAGENET1K_V1": "IMAGENET1K_FBGEMM_V1", "IMAGENET1K_V2": "IMAGENET1K_FBGEMM_V2"}
CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "samples"


@contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao's eager quantization warns that it is deprecated on every call; the
    # warnings say nothing about this model and would turn into errors under pytest.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quantized_enum_name(source: WeightsSource) -> str | None:
    """torchvision's quantized weights for pretrained float weights, else None."""
    return QUANTIZED_ENUMS.get(source.weights_id) if source.pretrained else None


def weights_id(source: WeightsSource) -> str:
    """Says plainly that the weights are int8, and how they were quantized."""
    name = quantized_enum_name(source)
    return f"{name}:int8" if name else f"{source.weights_id}:int8-ptq"


def calibration_images(directory: Path = CALIBRATION_DIR, limit: int = 8) -> list[Image.Image]:
    images = []
    for path in sorted(directory.glob("*.jpg"))[:limit]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def build_int8(
    spec: ModelSpec, preprocess: Callable[[Image.Image], torch.Tensor]
) -> torch.nn.Module:
    """The quantized model, ready for CPU inference (int8 kernels run on the CPU only)."""
    from torchvision.models import quantization as tvq

    torch.backends.quantized.engine = BACKEND
    source = spec.weights
    name = quantized_enum_name(source)
    with _quiet():
        if name is not None:
            try:
                weights = tvq.ResNet50_QuantizedWeights[name]
                pretrained: torch.nn.Module = tvq.resnet50(weights=weights, quantize=True)
            except Exception as exc:
                raise WeightsUnavailable(f"cannot load quantized weights {name}: {exc}") from exc
            return pretrained.eval()
        model: torch.nn.Module = _float_quantizable(source, len(spec.labels))
        model.eval()
        model.fuse_model(is_qat=False)  # type: ignore[operator]
        tq: Any = torch.ao.quantization  # untyped in torch's stubs
        model.qconfig = tq.get_default_qconfig(BACKEND)
        tq.prepare(model, inplace=True)
        _calibrate(model, preprocess)
        tq.convert(model, inplace=True)
    return model


def _float_quantizable(source: WeightsSource, num_classes: int) -> Any:
    from torchvision.models import quantization as tvq

    if source.seed is not None:
        # The same seeded construction as the float model, so fp32 and int8 share weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)
            return tvq.resnet50(weights=None, quantize=False, num_classes=num_classes)
    model = tvq.resnet50(weights=None, quantize=False, num_classes=num_classes)
    state = load_state_dict(source)
    assert state is not None
    model.load_state_dict(state)
    return model


def _calibrate(model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
    images = calibration_images()
    if not images:
        # No samples shipped: calibrate on noise, which is worse but keeps the worker usable.
        log.warning("no calibration images in %s; calibrating int8 on noise", CALIBRATION_DIR)
        batch = torch.randn(4, 3, 224, 224)
    else:
        # Each image also mirrored: twice the activations for the observers at no cost.
        tensors = [preprocess(i) for i in images]
        batch = torch.stack(tensors + [t.flip(-1) for t in tensors])
    with torch.inference_mode():
        model(batch)
