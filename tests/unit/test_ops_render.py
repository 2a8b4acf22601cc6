"""The contact sheet: a valid PNG of the inputs with their labels; meaningless results marked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.paths import ROOT, SAMPLES

pytest.importorskip("matplotlib", reason="the render extra (matplotlib) is not installed")
from PIL import Image

from cli.render import BANNER, render


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


def test_random_weights_sheet_is_a_png_with_a_warning(tmp_path: Path, http_base: str) -> None:
    items = [
        success("cat.jpg", "random:0", False),
        success(f"{http_base}/coffee.jpg", "random:0", False),
        {"id": "abcdef12-x", "state": "FAILURE", "error": {"type": "SourceNotFound"}},
    ]
    out = render(items, tmp_path / "sheet.png", image_root=SAMPLES)
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.width >= 600 and image.height >= 300
        # The tiles show the photos: many distinct colours, not an empty canvas.
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 1000
    assert red_pixels(out) > 500


def test_pretrained_sheet_has_no_warning_banner(tmp_path: Path) -> None:
    items = [
        success("cat.jpg", "IMAGENET1K_V2", True),
        success("rocket.jpg", "IMAGENET1K_V2", True),
    ]
    out = render(items, tmp_path / "sheet.png", image_root=SAMPLES)
    assert red_pixels(out) == 0


def test_render_command(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(success(n, "random:0", False)) for n in ["cat.jpg"]))
    out = tmp_path / "cli.png"
    cmd = [sys.executable, "-m", "producer", "render", str(results), "-o", str(out)]
    done = subprocess.run(
        [*cmd, "--image-root", str(SAMPLES)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert red_pixels(out) > 100
    assert BANNER.startswith("RANDOM")
