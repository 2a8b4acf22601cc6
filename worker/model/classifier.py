"""A torchvision classifier as three plain steps: preprocess, infer, postprocess.

Knows nothing of Celery."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from worker.errors import ConfigError
from worker.imaging import Cropped
from worker.model import onnx
from worker.model.arch import build
from worker.model.bf16 import bf16_pays, cpu_has_native_bf16, to_bf16
from worker.model.card import Preprocessing
from worker.model.gpu_decode import GpuJpegDecoder
from worker.model.prediction import Prediction
from worker.model.spec import ModelSpec
from worker.model.weights import load_state_dict

__all__ = ["Classifier", "Prediction", "build_network", "transforms_of"]

log = logging.getLogger(__name__)


def pick_device(setting: str) -> torch.device:
    """`auto` means the first GPU when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={setting} but no CUDA device is available")
    return device


def pick_precision(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def build_network(spec: ModelSpec) -> torch.nn.Module:
    """The float model with the spec's weights (seeded ones made the same in any process)."""
    source = spec.weights
    if source.seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)
            return build(spec.arch, len(spec.labels))
    model = build(spec.arch, len(spec.labels))
    state = load_state_dict(source)
    assert state is not None
    model.load_state_dict(state)
    return model


def transforms_of(p: Preprocessing) -> ImageClassification:
    """torchvision's own reference transform with these numbers: the enum's `transforms()`
    builds the same class."""
    return ImageClassification(
        crop_size=p.crop,
        resize_size=p.resize,
        mean=p.mean,
        std=p.std,
        interpolation=InterpolationMode(p.interpolation),
    )


class Classifier:
    """A loaded model plus its transforms and labels.

    `backend`: torch, onnxruntime or auto (worker/model/onnx.py). The Classifier's own default
    is torch, for in-process use; the worker's setting (BACKEND) defaults to auto."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "auto",
        precision: str = "fp32",
        gpu_decode: bool = False,
        backend: str = "torch",
        onnx_options: onnx.OnnxOptions | None = None,
    ):
        self.spec = spec
        self.source = spec.weights
        self.name = spec.model
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        if backend == "onnxruntime" and precision == "auto":
            self.precision = "fp32"  # what ONNX Runtime runs; pick_backend refuses the others
        self.transforms = transforms_of(spec.preprocessing)
        self._mean = torch.tensor(self.transforms.mean).view(-1, 1, 1)  # preprocess_cropped's
        self._std = torch.tensor(self.transforms.std).view(-1, 1, 1)
        self.categories: list[str] = list(spec.labels)
        self.input_size = int(self.transforms.crop_size[0])
        self.resize_size = int(self.transforms.resize_size[0])
        self.onnx_options = onnx_options or onnx.OnnxOptions()
        # auto precision may still choose fp32 at load (the bf16 guard): ONNX Runtime's
        # candidate is fp32 then, and the guard times it against torch's bf16.
        candidate = "fp32" if precision == "auto" and self.device.type == "cpu" else self.precision
        self.backend, self.backend_reason = onnx.pick_backend(backend, self.device, candidate)
        self.backend_setting = backend
        self.backend_fallback: str | None = None  # why ONNX Runtime was wanted but not used
        self.export_seconds: float | None = None  # this load's export; None: cached or torch
        self.session: onnx.OrtSession | None = None
        started = time.perf_counter()
        # auto: bf16 on such a CPU only where it timed faster at load (worker/model/bf16.py).
        self.model: torch.nn.Module | None = self._build(check_bf16=precision == "auto")
        if self.backend == "onnxruntime":
            self.model = None  # the session holds its own copy of the weights
        elif backend != "torch" and self.backend_fallback is None:
            log.info("BACKEND=%s: torch, as %s", backend, self.backend_reason)
        self._gpu_decoder: GpuJpegDecoder | None = None
        if gpu_decode and self.device.type == "cuda":
            self._gpu_decoder = GpuJpegDecoder(self.device, self.transforms)
        self.load_seconds = time.perf_counter() - started

    def _build(self, check_bf16: bool) -> torch.nn.Module:
        if self.precision == "int8":
            if self.device.type != "cpu":
                raise ConfigError("PRECISION=int8 runs on the CPU only; use fp16 on CUDA")
            from worker.model.quantized import build_int8

            return build_int8(self.spec, self.preprocess)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batch shapes repeat: tune once per shape
        model = build_network(self.spec).eval().to(self.device)
        if self.backend == "onnxruntime":
            self.session = self._onnx_session(model)
            if self.session is not None and self.precision == "fp32":
                return model  # __init__ lets it go: the session has its own copy
        # channels_last for every precision: fp32 on the CPU measured 20% faster, same numbers.
        model = model.to(memory_format=torch.channels_last)
        if self.precision == "bf16" and self.device.type == "cpu":
            bf16 = to_bf16(model)
            if not check_bf16:
                return bf16
            fp32 = onnx.OrtModule(self.session) if self.session is not None else model
            if not bf16_pays(fp32, bf16, self.input_size):
                self.precision = "fp32"
                log.info("PRECISION=auto: fp32 on %s", self.backend)
                return model
            if self.session is not None:
                self.session, self.backend = None, "torch"
                self.backend_reason = "bf16 on torch timed faster than fp32 on onnxruntime"
            return bf16
        return model

    def _onnx_session(self, model: torch.nn.Module) -> onnx.OrtSession | None:
        """The model on ONNX Runtime (exported now, or found in ONNX_CACHE_DIR), checked against
        `model` on the sample images; None, after saying why loudly, where it cannot be."""
        try:
            session, exported = onnx.load_session(
                self.spec, model, self._probe(), self.onnx_options
            )
        except onnx.OnnxUnavailable as exc:
            self.backend = "torch"
            self.backend_fallback = f"onnxruntime: {exc.summary}; torch ran instead"
            level = logging.ERROR if self.backend_setting == "onnxruntime" else logging.WARNING
            log.log(
                level,
                "BACKEND=%s: %s on onnxruntime: %s. FALLING BACK TO TORCH (results say "
                "backend=torch)",
                self.backend_setting,
                self.spec.arch,
                exc,
            )
            return None
        self.export_seconds = exported.seconds
        if exported.seconds is None:
            log.info(
                "onnxruntime: %s from the cache (%d threads, spinning %s)",
                exported.path,
                session.threads,
                session.spinning,
            )
        else:
            log.info(
                "onnxruntime: exported %s in %.1fs to %s (%d threads, spinning %s)",
                self.spec.arch,
                exported.seconds,
                exported.path,
                session.threads,
                session.spinning,
            )
        return session

    def _probe(self) -> torch.Tensor:
        return onnx.probe_batch(self.preprocess, self.input_size)

    @property
    def shrink_size(self) -> int | None:
        """The resize a decode process can do for the transforms (see ImageModel)."""
        bilinear = self.transforms.interpolation == InterpolationMode.BILINEAR
        return self.resize_size if bilinear else None

    @property
    def weights_id(self) -> str:
        if self.precision == "int8":
            from worker.model.quantized import weights_id

            return weights_id(self.source)
        return self.source.weights_id

    def describe(self) -> dict[str, Any]:
        """What every result says about the model that produced it."""
        spec = self.spec
        info: dict[str, Any] = {
            "model": self.name,
            "name": spec.name,
            "arch": spec.arch,
            "version": spec.version,
            "weights": self.weights_id,
            "labels": spec.labels_id,
            "pretrained": self.source.pretrained,
            "preprocess": spec.preprocess_id,
            "precision": self.precision,
            "device": str(self.device),
            "backend": self.backend,
        }
        if self.backend_fallback is not None:
            info["backend_fallback"] = self.backend_fallback
        if self.source.pretrained is False:
            info["warning"] = "random weights: labels are meaningless (demo/test only)"
        return info

    # -- the three steps -----------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image to a normalised 3xCxC float tensor (the model's transforms)."""
        tensor: torch.Tensor = self.transforms(image)
        return tensor

    @property
    def crop_size(self) -> int | None:
        """The crop a decode process may cut after resizing to `shrink_size` (see Cropped)."""
        return self.input_size if self.shrink_size else None

    def preprocess_cropped(self, cropped: Cropped) -> torch.Tensor:
        """The rest of the transforms for pixels a decode process resized and cropped: the
        tensor `preprocess` gives for the whole image, to the bit and in the same layout
        (torchvision's `pil_to_tensor`, `convert_image_dtype` and `normalize` are these very
        operations; done in place here, on the bytes as received: no PIL image, no copies)."""
        side = cropped.side
        if side != self.input_size:
            raise ValueError(f"a {side}x{side} crop for a {self.input_size} input")
        pixels = torch.frombuffer(cropped.pixels, dtype=torch.uint8).view(side, side, 3)
        tensor = pixels.permute(2, 0, 1).to(torch.float32)
        return tensor.div_(255.0).sub_(self._mean).div_(self._std)

    def preprocess_encoded(self, data: bytes) -> torch.Tensor | None:
        """JPEG bytes decoded and transformed on the GPU; None where Pillow must do it instead."""
        if self._gpu_decoder is None:
            return None
        return self._gpu_decoder(data)

    def decode_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        """Many JPEGs decoded and transformed on the GPU at once; None where Pillow must."""
        if self._gpu_decoder is None:
            return [None] * len(datas)
        return self._gpu_decoder.decode_batch(datas)

    def launch(self, batch: torch.Tensor) -> torch.Tensor:
        """`infer` without waiting: probabilities on the model's device (on a GPU, queued
        work; reading them waits for it)."""
        if self.session is not None:
            return torch.softmax(self.session.logits(batch), dim=1)
        assert self.model is not None
        with torch.inference_mode(), self._autocast():
            x = batch.to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            if self._cpu_bf16:
                x = x.to(torch.bfloat16)
            logits = self.model(x)
            return torch.softmax(logits.float(), dim=1)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of preprocessed images to class probabilities (float32, on the CPU)."""
        return self.launch(batch).cpu()

    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> list[Prediction]:
        """One row of probabilities to the top-k labels, most likely first."""
        values, indices = torch.topk(probabilities, k=min(top_k, probabilities.numel()))
        return [
            Prediction(int(i), self.categories[int(i)], float(v))
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def warm_up(self, batch_size: int = 1) -> None:
        """One forward pass, so the first real job does not pay for lazy initialisation."""
        self.infer(torch.zeros(batch_size, 3, self.input_size, self.input_size))

    @property
    def _cpu_bf16(self) -> bool:
        # On the CPU bf16 is the weights' own dtype (to_bf16); on CUDA it is autocast.
        return self.precision == "bf16" and self.device.type == "cpu"

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision in ("bf16", "fp16") and not self._cpu_bf16:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(self.device.type, dtype=dtype):
                yield
        else:
            yield
