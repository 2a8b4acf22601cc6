"""`imgqueue render` as a user runs it (a process): a results file to a contact sheet, random
weights' results marked by the warning banner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT, SAMPLES
from tests.support.render import red_pixels, success

pytest.importorskip("matplotlib", reason="the render extra (matplotlib) is not installed")

from cli.render import BANNER


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
