"""The stand-in model (`MODEL=sleep:<ms>`) runs the whole job path without torch: loading torch
costs a process 2-4 s of CPU, and most of the suite's workers are stand-ins. Here: its batches
are placeholders of the batch size (tests/system/test_standin.py: a runtime and a worker)."""

from __future__ import annotations

from worker.batcher import Batcher
from worker.model import standin
from worker.model.standin import SleepModel


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
