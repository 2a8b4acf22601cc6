"""A decode process cuts the model's input itself (resize, then the transforms' centre crop):
the tensor the worker makes of those bytes is the one the weights' transforms make of the whole
image, to the bit, draft decoding or not, whatever the image's shape. The decode process's own
code runs here in-process (tests/system/test_hostile_decode.py runs it in a real one)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.support.paths import SAMPLES
from worker import imaging
from worker.imaging import Cropped, Decoded, center_crop, decode
from worker.model.classifier import Classifier
from worker.model.spec import resolve_model
from worker.sandbox import child
from worker.sandbox.pool import _decoded
from worker.settings import DEFAULT_FORMATS as FORMATS

MAX_PIXELS = 64_000_000


@pytest.fixture(scope="module")
def model() -> Classifier:
    return Classifier(resolve_model(arch="resnet18", weights="random:0"), "cpu", "fp32")


def _in_child(data: bytes, draft: int | None, resize: int, crop: int) -> Decoded | Cropped:
    """What a decode process answers and the pool makes of it, without the process."""
    request: dict[str, Any] = {"op": "decode", "max_pixels": MAX_PIXELS, "formats": FORMATS}
    request.update(timeout=5.0, per_mp=1.0, draft_size=draft, resize=resize, crop=crop)
    reply, pixels = child._handle(imaging, request, data)
    result = _decoded(reply, bytearray(pixels))
    assert isinstance(result, Decoded | Cropped), result
    return result


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(SAMPLES / "cat.jpg").convert("RGB").resize(size).save(out, "PNG")
    return out.getvalue()


# The samples, and odd shapes around the resize and crop sizes.
IMAGES = [(p.name, p.read_bytes()) for p in sorted(Path(SAMPLES).glob("*.jpg"))] + [
    (f"{w}x{h}", _png((w, h))) for w, h in [(233, 500), (1001, 333), (232, 232), (224, 231)]
]


@pytest.mark.parametrize("draft", [None, 232])
def test_the_cropped_input_is_the_transforms_tensor_to_the_bit(
    model: Classifier, draft: int | None
) -> None:
    resize, crop = model.shrink_size, model.crop_size
    assert resize and crop
    for name, data in IMAGES:
        decoded = decode(data, max_pixels=MAX_PIXELS, allowed_formats=FORMATS, draft_size=draft)
        reference = model.preprocess(decoded.image)
        cut = _in_child(data, draft, resize, crop)
        assert isinstance(cut, Cropped), name
        assert (cut.width, cut.height, cut.format) == (
            decoded.width,
            decoded.height,
            decoded.format,
        )
        tensor = model.preprocess_cropped(cut)
        assert torch.equal(tensor, reference), name
        assert tensor.stride() == reference.stride(), name  # the same layout, too


def test_an_image_smaller_than_the_crop_is_left_to_the_transforms() -> None:
    small = _png((200, 150))  # shrunk to 309x232 by the resize: croppable to 224, not to 240
    assert isinstance(_in_child(small, None, 232, 224), Cropped)
    whole = _in_child(small, None, 232, 240)
    assert isinstance(whole, Decoded) and whole.image.size == (309, 232)
    assert center_crop(Image.new("RGB", (300, 200)), 224) is None
