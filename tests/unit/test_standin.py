"""The stand-in model (`MODEL=sleep:<ms>`) runs the whole job path without torch: loading torch
costs a process 2-4 s of CPU, and most of the suite's workers are stand-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.paths import ROOT, SAMPLES
from worker.batcher import Batcher
from worker.model import standin
from worker.model.standin import SleepModel

# A runtime started and two jobs classified (one decoded in a decode process, one here) with
# torch and torchvision unimportable: an import of either fails, naming the importer.
_RUN = r"""
import dataclasses, json, sys
sys.modules["torch"] = sys.modules["torchvision"] = None
from worker import pipeline, runtime
from worker.settings import Settings
results = []
for sandbox in (True, False):
    settings = dataclasses.replace(Settings.from_env(), decode_sandbox=sandbox)
    rt = runtime.start(settings)
    try:
        results.append(pipeline.classify("cat.jpg", 3, rt))
    finally:
        rt.stop()
print(json.dumps(results))
"""


def test_a_standin_runtime_classifies_without_importing_torch() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "PYTEST"))}
    env.update(
        PYTHONPATH=str(ROOT), MODEL="sleep:0ms", IMAGE_ROOT=str(SAMPLES), DECODE_PROCESSES="1"
    )
    out = subprocess.run(
        [sys.executable, "-c", _RUN], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for result in results:
        assert result["model"] == "sleep:0ms" and "not real" in result["warning"]
        assert result["image"]["format"] == "JPEG" and result["image"]["width"] > 16
        assert [p["index"] for p in result["predictions"]] == [0, 1, 2]
        assert result["predictions"][0]["probability"] == 0.0010000000474974513  # float32
        assert result["batch_size"] == 1


def test_standin_batches_are_placeholders_of_the_batch_size() -> None:
    model = SleepModel("sleep:0ms")
    batcher = Batcher(model.launch, max_batch_size=4, max_delay=0.0, stack=standin.stack)
    try:
        futures = [batcher.submit(model.preprocess(None)) for _ in range(3)]  # type: ignore[arg-type]
        rows = [f.result(timeout=10) for f in futures]
    finally:
        batcher.stop()
    assert all(1 <= size <= 3 and len(row) == standin.NUM_CLASSES for row, size in rows)
    predictions = model.postprocess(rows[0][0], top_k=2)
    assert [(p.index, p.label) for p in predictions] == [(0, "class 0"), (1, "class 1")]
    assert str(model.device) == "cpu" and model.device.type == "cpu"
