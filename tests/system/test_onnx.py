"""The ONNX Runtime backend with processes: processes exporting one model at once export it once
and never see half a file; in a real worker, the ResNet-50 test weights on ONNX Runtime match
torchvision, and the worker says which backend ran (tests/unit/test_onnx.py: in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import Client
from tests.support.fidelity import reference_probabilities
from tests.support.paths import ROOT, SAMPLES
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess
from worker.model import onnx
from worker.model.spec import resolve_model

ARCH = "mobilenet_v3_small"
SAMPLE_PATHS = sorted(SAMPLES.glob("*.jpg"))


# -- export, cache, parity --------------------------------------------------------------------


_EXPORT_ONE = """
import sys
from pathlib import Path
from worker.model import onnx
from worker.model.classifier import build_network
from worker.model.spec import resolve_model
spec = resolve_model(arch=sys.argv[1], weights="random:0")
model = build_network(spec).eval()
done = onnx.ensure_exported(spec, model, 224, Path(sys.argv[2]))
print(done.seconds is not None)
"""


def test_processes_exporting_at_once_export_once_and_never_see_half_a_file(
    tmp_path: Path,
) -> None:
    import onnx as onnx_format

    cache = tmp_path / "shared"
    published = cache / onnx.entry_name(resolve_model(arch=ARCH, weights="random:0"), 224)
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        # What a worker reads, polled while the two export: once there, it is whole.
        while not stop.wait(0.01):
            if (published / onnx.MODEL_FILE).is_file():
                onnx_format.load(str(published / onnx.MODEL_FILE))
                seen.append((published / onnx.MODEL_FILE).stat().st_size)

    left_behind = cache / f".{published.name}.12345.x.tmp"  # by an exporter that was killed
    left_behind.mkdir(parents=True)
    (left_behind / onnx.MODEL_FILE).write_bytes(b"half a")
    forgotten = cache / "resnet50-0123456789abcdef0123"  # no load for longer than UNUSED_DAYS
    forgotten.mkdir()
    (forgotten / onnx.MODEL_FILE).write_bytes(b"old")
    (forgotten / onnx.META_FILE).write_text("{}")
    old = time.time() - (onnx.UNUSED_DAYS + 1) * 86400
    os.utime(forgotten / onnx.META_FILE, (old, old))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(ROOT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT_ONE, ARCH, str(cache)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0].split() for p in procs]
    wait_for(lambda: seen, 10, "the watcher to read the published model")
    stop.set()
    watcher.join(10)
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(o[-1] for o in outs) == ["False", "True"]  # one exported, one waited for it
    assert len(set(seen)) == 1
    # No temporary directory left behind, the dead exporter's and the unused entry swept away.
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [published.name]


# -- one real worker --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-onnx-cache")


@pytest.fixture(scope="module")
def onnx_worker(workers: WorkerFactory, worker_cache: Path) -> Iterator[WorkerProcess]:
    yield workers.start(BACKEND="onnxruntime", ONNX_CACHE_DIR=str(worker_cache))


def test_worker_on_onnxruntime_matches_torchvision_and_says_so(
    onnx_worker: WorkerProcess, client: Client, weights_file: Path, worker_cache: Path
) -> None:
    """The parity test (tests/system/test_service.py) on ONNX Runtime: the seed tutorial's pipeline
    within 1e-5, every result naming its backend; the export is timed and kept in the cache."""
    names = [p.name for p in SAMPLE_PATHS]
    ids = client.submit_many(names, top_k=1000)
    for name, task_id in zip(names, ids, strict=True):
        result = client.result(task_id, timeout=120)
        assert (result["backend"], result["precision"]) == ("onnxruntime", "fp32")
        assert "backend_fallback" not in result
        got = {p["index"]: p["probability"] for p in result["predictions"]}
        expected = reference_probabilities(weights_file, SAMPLES / name)
        worst = max(abs(got[i] - expected[i]) for i in range(1000))
        assert worst < 1e-5, f"{name}: max |dp| = {worst}"
    (meta,) = [json.loads(p.read_text()) for p in worker_cache.glob("resnet50-*/export.json")]
    assert meta["arch"] == "resnet50" and meta["weights"].startswith("sha256:")
    assert meta["export_seconds"] > 0
