"""The dynamic batcher in-process (stand-in model): batch sizes, delays, errors, the overlapped
loop and decoding with the batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import torch

from tests.support.waiting import wait_for
from worker import batcher as batcher_module
from worker import gap as gap_module
from worker.batcher import Batcher, GpuDecodeFailed, InferenceDead, is_fatal
from worker.gap import Gap


class GatedModel:
    """Records batch sizes; holds the first batch until released, so the queue fills behind it."""

    def __init__(self, fail_if_negative: bool = False) -> None:
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_if_negative = fail_if_negative

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(batch.shape[0])
        self.entered.set()
        assert self.release.wait(30)
        if self.fail_if_negative and bool((batch < 0).any()):
            raise ValueError("poisoned batch")
        return batch * 2


def _item(value: float) -> torch.Tensor:
    return torch.full((3,), value)


def test_batches_fill_up_to_max_size() -> None:
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=4, max_delay=0.0)
    try:
        first = batcher.submit(_item(0))
        assert model.entered.wait(10)
        rest = [batcher.submit(_item(i)) for i in range(1, 18)]
        model.release.set()
        results = [f.result(timeout=30) for f in [first, *rest]]
    finally:
        batcher.stop()
    assert model.sizes == [1, 4, 4, 4, 4, 1]
    # Every job gets its own row back, and the size of the batch it rode in.
    assert [float(row[0]) for row, _ in results] == [2.0 * i for i in range(18)]
    assert [size for _, size in results[1:5]] == [4, 4, 4, 4]


def test_max_delay_is_honoured() -> None:
    model = GatedModel()
    model.release.set()
    batcher = Batcher(model, max_batch_size=8, max_delay=0.3)
    try:
        with batcher.upcoming():  # another job is still decoding: worth waiting for
            started = time.monotonic()
            with batcher.upcoming():
                lone = batcher.submit(_item(1))
            _, size = lone.result(timeout=10)
            waited = time.monotonic() - started
        # A partner arriving within the delay rides in the same batch.
        with batcher.upcoming(), batcher.upcoming():
            pair = [batcher.submit(_item(2)), batcher.submit(_item(3))]
        sizes = [f.result(timeout=10)[1] for f in pair]
        # Nothing else on its way: no waiting at all.
        started = time.monotonic()
        batcher(_item(4))
        alone = time.monotonic() - started
    finally:
        batcher.stop()
    assert size == 1
    assert waited >= 0.3  # it waited out the delay for batch-mates before running alone
    assert sizes == [2, 2]
    assert alone < 0.3


def test_a_job_that_stops_being_upcoming_ends_the_wait_for_partners() -> None:
    """The inference thread may take a job while it is still counted as on its way (it
    submitted, and leaves `upcoming` just after): its batch runs once nothing is on its way."""
    model = GatedModel()
    model.release.set()
    batcher = Batcher(model, max_batch_size=8, max_delay=5.0)
    try:
        with batcher.upcoming():
            lone = batcher.submit(_item(1))
            time.sleep(0.2)  # taken by now, and waiting for partners
        started = time.monotonic()
        _, size = lone.result(timeout=10)
        waited = time.monotonic() - started
    finally:
        batcher.stop()
    assert size == 1
    assert waited < 1.0


def test_on_the_cpu_decoding_waits_for_the_pass_and_the_batch_waits_for_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """worker/gap.py: no decode starts while a forward pass runs; a batch formed in the gap
    waits past MAX_BATCH_DELAY_MS for a job still decoding (up to DECODE_WAIT_S), then runs,
    once the images already sent to decode processes are back."""
    monkeypatch.setattr(batcher_module, "DECODE_WAIT_S", 10.0)
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=8, max_delay=0.0)
    batcher.gap = gap = Gap(max_wait=30)
    try:
        first = batcher.submit(_item(0))
        assert model.entered.wait(10)  # a pass runs: the gap is closed
        decoded = threading.Event()

        def decode() -> None:
            with gap.request():
                decoded.set()

        threading.Thread(target=decode).start()
        assert not decoded.wait(0.2)
        model.release.set()
        assert decoded.wait(10) and first.result(timeout=10)[1] == 1
        # A job still decoding when the batch could run: the batch waits for it.
        with batcher.upcoming(), gap.decoding_one():
            lone = batcher.submit(_item(1))
            time.sleep(0.05)  # past the delay (0), within DECODE_WAIT_S
            partner = batcher.submit(_item(2))
        assert [f.result(timeout=10)[1] for f in (lone, partner)] == [2, 2]
        # One that decodes for longer than that joins a later batch.
        monkeypatch.setattr(batcher_module, "DECODE_WAIT_S", 0.1)
        with batcher.upcoming(), gap.decoding_one():
            lone = batcher.submit(_item(3))
            assert lone.result(timeout=10)[1] == 1
        # A pass waits for an image already sent to a decode process to come back.
        monkeypatch.setattr(gap_module, "DECODE_WAIT_S", 10.0)
        sent, back = threading.Event(), threading.Event()

        def slow_decode() -> None:
            with gap.request():
                sent.set()
                assert back.wait(10)

        threading.Thread(target=slow_decode).start()
        assert sent.wait(10)
        model.entered.clear()
        waiting = batcher.submit(_item(4))
        assert not model.entered.wait(0.2)
        back.set()
        assert waiting.result(timeout=10)[1] == 1
    finally:
        batcher.stop()


def test_a_failing_batch_fails_only_its_own_jobs() -> None:
    model = GatedModel(fail_if_negative=True)
    batcher = Batcher(model, max_batch_size=4, max_delay=0.0)
    try:
        poisoned = batcher.submit(_item(-1))
        assert model.entered.wait(10)
        good: list[Future[tuple[torch.Tensor, int]]] = [batcher.submit(_item(i)) for i in (1, 2)]
        model.release.set()
        with pytest.raises(ValueError, match="poisoned"):
            poisoned.result(timeout=10)
        assert [float(f.result(timeout=10)[0][0]) for f in good] == [2.0, 4.0]
        # The loop survived: later jobs still run.
        assert float(batcher(_item(5))[0][0]) == 10.0
    finally:
        batcher.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(_item(1))


def test_setup_runs_on_the_inference_thread_and_its_errors_surface() -> None:
    names: list[str] = []
    batcher = Batcher(
        lambda b: b, 2, 0.0, setup=lambda: names.append(threading.current_thread().name)
    )
    batcher.stop()
    assert names == ["inference"]

    def broken() -> None:
        raise OSError("weights unreadable")

    with pytest.raises(OSError, match="unreadable"):
        Batcher(lambda b: b, 2, 0.0, setup=broken)


def test_a_fatal_error_kills_the_batcher_and_fails_every_waiter_at_once() -> None:
    calls: list[int] = []
    all_queued = threading.Event()

    def infer(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        if len(calls) == 2:
            all_queued.wait(5)  # die with the other four still waiting in the queue
            raise SystemError("the model is gone")
        return batch

    deaths: list[BaseException] = []
    batcher = Batcher(infer, max_batch_size=1, max_delay=0.0, on_death=deaths.append)
    assert batcher.submit(_item(1)).result(5)[1] == 1
    futures = [batcher.submit(_item(i)) for i in range(5)]
    all_queued.set()
    for future in futures:
        with pytest.raises(InferenceDead, match="the model is gone"):
            future.result(5)  # not left waiting: failed when the thread died
    with pytest.raises(InferenceDead):
        batcher.submit(_item(9))
    # on_death runs after the waiters are failed, on the dying thread.
    wait_for(lambda: deaths, 5, "on_death to be called")
    assert len(deaths) == 1 and isinstance(deaths[0], SystemError)


def test_ordinary_errors_stay_with_their_batch_and_hangs_can_be_declared() -> None:
    assert not is_fatal(ValueError("a bad input")) and is_fatal(MemoryError())
    assert is_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=1, max_delay=0.0)
    stuck = batcher.submit(_item(1))
    assert model.entered.wait(5)
    waiting = batcher.submit(_item(2))
    batcher.declare_dead(TimeoutError("no batch finished"))  # what a job's timeout does
    with pytest.raises(InferenceDead):
        waiting.result(5)
    model.release.set()
    stuck.result(5)  # the batch in flight still ends


def _decode_fake(datas: list[bytes]) -> list[torch.Tensor | None]:
    """Stands in for the GPU's batched decode: b"bad" cannot be decoded."""
    return [None if d == b"bad" else torch.full((3,), float(d)) for d in datas]


@pytest.mark.parametrize("overlap", [False, True])
def test_encoded_inputs_decode_with_their_batch_and_failures_go_back(overlap: bool) -> None:
    decoded: list[int] = []

    def decode(datas: list[bytes]) -> list[torch.Tensor | None]:
        decoded.append(len(datas))
        return _decode_fake(datas)

    batcher = Batcher(
        lambda b: b * 2, max_batch_size=8, max_delay=0.2, decode_encoded=decode, overlap=overlap
    )
    try:
        with batcher.upcoming():
            futures = [batcher.submit_encoded(d) for d in (b"1", b"bad", b"3")]
            futures.append(batcher.submit(_item(4)))  # a Pillow-decoded input in the same batch
        assert float(futures[0].result(5)[0][0]) == 2.0
        with pytest.raises(GpuDecodeFailed):
            futures[1].result(5)
        assert float(futures[2].result(5)[0][0]) == 6.0
        assert float(futures[3].result(5)[0][0]) == 8.0
        assert futures[0].result(5)[1] == 3  # the batch held the three decodable inputs
        assert decoded == [3]  # one call for the batch's encoded inputs
    finally:
        batcher.stop()


def test_the_overlapped_loop_keeps_order_and_fails_in_flight_batches_on_death() -> None:
    gate = threading.Event()

    def infer(batch: torch.Tensor) -> torch.Tensor:
        if bool((batch == 9).any()):
            gate.wait(5)  # the rest of the doomed ones queue up or go in flight meanwhile
            raise SystemError("the device is gone")
        return batch + 1

    batcher = Batcher(infer, max_batch_size=2, max_delay=0.0, overlap=True)
    try:
        first = [batcher.submit(_item(i)) for i in range(4)]
        assert [float(f.result(5)[0][0]) for f in first] == [1.0, 2.0, 3.0, 4.0]
        doomed = [batcher.submit(_item(9)) for _ in range(3)]
        gate.set()
        for future in doomed:
            with pytest.raises(InferenceDead):
                future.result(5)  # none left waiting, in flight or queued
    finally:
        batcher.stop()


def test_gpu_jpeg_decoder_batches_and_isolates_a_bad_image() -> None:
    """The batched decode path on the CPU (torchvision decodes a list of JPEGs there too)."""
    from PIL import Image
    from torchvision.models import ResNet50_Weights

    from tests.support.paths import SAMPLES
    from worker.model.gpu_decode import GpuJpegDecoder

    transforms = ResNet50_Weights.IMAGENET1K_V2.transforms()
    decoder = GpuJpegDecoder(torch.device("cpu"), transforms)
    paths = sorted(SAMPLES.glob("*.jpg"))
    datas = [p.read_bytes() for p in paths]
    out = decoder.decode_batch([datas[0], b"\xff\xd8 not really a jpeg", *datas[1:]])
    assert out[1] is None and all(t is not None for i, t in enumerate(out) if i != 1)
    for path, tensor in zip(paths, [out[0], *out[2:]], strict=True):
        assert tensor is not None and tensor.shape == (3, 224, 224)
        reference = transforms(Image.open(path).convert("RGB"))
        assert float((tensor - reference).abs().mean()) < 0.05, path.name
