"""Model code: the model spec, its checks, the classifier and its stand-in. Knows nothing of
Celery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from worker.model.prediction import Prediction

if TYPE_CHECKING:  # reading a card or a name must not load torch (worker/celery_app.py)
    import torch
    from PIL import Image

    from worker.imaging import Cropped
    from worker.model.onnx import OnnxOptions
    from worker.model.spec import ModelSpec


class ImageModel(Protocol):
    """What the pipeline needs of a model: the three steps plus a description for results."""

    name: str
    device: torch.device
    precision: str
    backend: str  # torch, onnxruntime, or none for the stand-in
    resize_size: int
    load_seconds: float

    @property
    def shrink_size(self) -> int | None:
        """The shorter side the transforms resize to, where a decode process may do it (PIL,
        bilinear) with the same result; None: send the image as decoded."""
        ...

    @property
    def crop_size(self) -> int | None:
        """The centre crop a decode process may cut after resizing to `shrink_size`; None:
        the transforms crop."""
        ...

    @property
    def weights_id(self) -> str: ...
    def describe(self) -> dict[str, Any]: ...
    def preprocess(self, image: Image.Image) -> torch.Tensor: ...
    def preprocess_cropped(self, cropped: Cropped) -> torch.Tensor: ...
    def preprocess_encoded(self, data: bytes) -> torch.Tensor | None: ...
    def decode_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]: ...
    def launch(self, batch: torch.Tensor) -> torch.Tensor: ...
    def infer(self, batch: torch.Tensor) -> torch.Tensor: ...
    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> list[Prediction]: ...
    def warm_up(self, batch_size: int = 1) -> None: ...


def build_model(
    model: str,
    spec: ModelSpec | None,
    device: str,
    precision: str,
    gpu_decode: bool = False,
    name: str = "",
    backend: str = "torch",
    onnx_options: OnnxOptions | None = None,
) -> ImageModel:
    """The resolved model (worker/model/spec.py) on its backend (worker/model/onnx.py), or for
    `MODEL=sleep:<ms>ms` a fixed-latency stand-in."""
    if model.startswith("sleep:"):
        from worker.model.standin import SleepModel

        return SleepModel(model, name)
    if spec is None:
        raise ValueError("a model needs its resolved spec (worker.model.spec.from_settings)")
    from worker.model.classifier import Classifier

    return Classifier(spec, device, precision, gpu_decode, backend, onnx_options)
