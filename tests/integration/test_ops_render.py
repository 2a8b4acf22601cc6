"""The contact sheet: a valid PNG of the inputs with their labels, one of them fetched from the
loopback HTTP server; random weights' results marked by a red warning banner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import SAMPLES
from tests.support.render import red_pixels, success

pytest.importorskip("matplotlib", reason="the render extra (matplotlib) is not installed")
from PIL import Image

from cli.render import render


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
