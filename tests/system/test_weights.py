"""A worker refuses to start without weights, saying why."""

from __future__ import annotations

from pathlib import Path

from tests.support.workers import WorkerFactory


def test_worker_refuses_to_start_without_weights(workers: WorkerFactory, tmp_path: Path) -> None:
    worker = workers.start(wait=False, MODEL_WEIGHTS=str(tmp_path / "absent.pth"))
    code = worker.proc.wait(120)
    assert code != 0
    assert "worker cannot start" in worker.log()
    assert "absent.pth" in worker.log()
