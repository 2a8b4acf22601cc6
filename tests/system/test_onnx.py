"""The ONNX Runtime backend in a real worker: the ResNet-50 test weights on ONNX Runtime match
torchvision, and the worker says which backend ran."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import Client
from tests.support.paths import SAMPLES
from tests.support.workers import WorkerFactory, WorkerProcess

SAMPLE_PATHS = sorted(SAMPLES.glob("*.jpg"))


# -- the choice -------------------------------------------------------------------------------


# -- export, cache, parity --------------------------------------------------------------------


# -- loud fallbacks ---------------------------------------------------------------------------


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
    from tests.system.test_service import reference_probabilities

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
