"""What the contact-sheet tests share: a result as `imgqueue result` prints it, and the red
pixels of the warning banner's strip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def success(source: str, weights: str, pretrained: bool | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "source": source,
        "model": "resnet50",
        "weights": weights,
        "pretrained": pretrained,
        "predictions": [
            {"index": 281, "label": "tabby", "probability": 0.62},
            {"index": 285, "label": "Egyptian cat", "probability": 0.21},
        ],
        "cached": False,
    }
    if pretrained is False:
        result["warning"] = "random weights: labels are meaningless (demo/test only)"
    return {"id": f"id-{source}", "state": "SUCCESS", "result": result}


def red_pixels(png: Path, top_fraction: float = 0.08) -> int:
    """Strongly red pixels in the top strip (where the warning banner goes)."""
    with Image.open(png) as image:
        assert image.format == "PNG"
        rgb = np.asarray(image.convert("RGB")).astype(int)
    strip = rgb[: int(rgb.shape[0] * top_fraction)]
    r, g, b = strip[..., 0], strip[..., 1], strip[..., 2]
    return int(((r > 150) & (g < 80) & (b < 80)).sum())
