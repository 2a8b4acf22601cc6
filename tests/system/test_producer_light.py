"""The producer install never needs torch or the worker: importing the producer and the CLI, in
a fresh process, loads neither."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def test_import_producer_leaves_torch_and_worker_out() -> None:
    code = (
        "import sys, producer, cli.main\n"
        "heavy = ('torch', 'torchvision', 'worker', 'PIL')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
