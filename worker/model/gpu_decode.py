"""JPEG decode and reference transforms on the GPU (nvJPEG through torchvision.io).

Unverified on real hardware in this repository's CI (no GPU there). Any failure returns None so
the caller falls back to Pillow on the CPU; the CPU path never imports or touches this.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class GpuJpegDecoder:
    """Bytes in, a normalised 3x224x224 float tensor on `device` out (or None to fall back)."""

    def __init__(self, device: torch.device, transforms: Callable[[torch.Tensor], torch.Tensor]):
        self.device = device
        self.transforms = transforms
        # nvJPEG handles are per device; serialise calls rather than trust thread safety.
        self._lock = threading.Lock()
        # torchvision 0.29 warns on every decode that TorchCodec supersedes it; nvJPEG through
        # torchvision.io is what is pinned and tested here (set once, at model load).
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities of TorchVision"
        )
        self._warned = False

    def decode_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        """Many JPEGs with one batched nvJPEG call (on the inference thread); where the batch
        call fails, one at a time, so an undecodable image only costs itself (None)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            with self._lock:
                images = decode_jpeg(
                    encoded, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True
                )
        except Exception as exc:
            log.debug("batched GPU decode failed (%s); one image at a time", exc)
            return [self(d) for d in datas]
        out: list[torch.Tensor | None] = []
        for image in images:
            try:
                out.append(self.transforms(image))
            except Exception:
                out.append(None)
        return out

    def __call__(self, data: bytes) -> torch.Tensor | None:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            with self._lock:
                image = decode_jpeg(
                    encoded, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True
                )
            # The weights' transforms accept uint8 CHW tensors: resize, crop, scale, normalise.
            assert isinstance(image, torch.Tensor)
            tensor: torch.Tensor = self.transforms(image)
            return tensor
        except Exception as exc:  # corrupt or unusual JPEGs: Pillow decides and reports
            if not self._warned:
                log.warning("GPU JPEG decode failed (%s); falling back to Pillow", exc)
                self._warned = True
            return None
