"""The fixed-latency stand-in model used by benchmarks and load tests (`MODEL=sleep:<ms>`): a
real worker runs the whole queue path on it, and a runtime in a fresh process classifies with
torch unimportable (loading torch costs a process 2-4 s of CPU, and most of the suite's workers
are stand-ins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from producer import Client
from tests.support.paths import ROOT, SAMPLES
from tests.support.workers import WorkerFactory


def test_standin_model_for_benchmarks(workers: WorkerFactory, client: Client) -> None:
    """MODEL=sleep:Nms runs the whole queue path with a fixed-latency fake model."""
    worker = workers.start(MODEL="sleep:20ms", MODEL_WEIGHTS="IMAGENET1K_V2")  # never touched
    ids = client.submit_many(["cat.jpg"] * 6, top_k=2)
    ids.append(client.submit("coffee.jpg", top_k=2))
    results = [o.unwrap() for o in client.wait(ids, timeout=60)]
    assert {r["model"] for r in results} == {"sleep:20ms"}
    assert all("not real" in r["warning"] for r in results)
    # Started, and ran bulk and single jobs, without loading torch (2-4 s of CPU per worker).
    maps = Path(f"/proc/{worker.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text()


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
