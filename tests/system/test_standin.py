"""The fixed-latency stand-in model used by benchmarks and load tests."""

from __future__ import annotations

from pathlib import Path

from producer import Client
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
