"""The contact sheet: a valid PNG of the inputs with their labels; meaningless results marked.
Here: a sheet of pretrained results has no warning banner (tests/integration: a random
weights sheet with a photo over HTTP; tests/system: `imgqueue render`, a process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import SAMPLES
from tests.support.render import red_pixels, success

pytest.importorskip("matplotlib", reason="the render extra (matplotlib) is not installed")

from cli.render import render


def test_pretrained_sheet_has_no_warning_banner(tmp_path: Path) -> None:
    items = [
        success("cat.jpg", "IMAGENET1K_V2", True),
        success("rocket.jpg", "IMAGENET1K_V2", True),
    ]
    out = render(items, tmp_path / "sheet.png", image_root=SAMPLES)
    assert red_pixels(out) == 0
