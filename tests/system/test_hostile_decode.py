"""Bounded cost per image, whatever the bytes: the decode sandbox (worker/sandbox), its decode
processes, in a worker and in this process.

A corpus of crafted files, one per family (tests/support/corpus.py), each at the MAX_IMAGE_BYTES
cap, goes through a real worker at default settings; then sixteen 64-megapixel RGBA images at
once. Memory is read from /proc: VmHWM is a process's peak resident size. In this process, the
pool kills a decode past its deadline or crash and recovers, and a chunk of images costs only
its culprit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import Client, JobFailed
from tests.support import corpus
from tests.support.paths import SAMPLES
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess
from worker.errors import DecodeTimeout, NotAnImage
from worker.fetch import Fetched
from worker.imaging import Cropped
from worker.sandbox.pool import DecodePool, Limits, default_limits
from worker.settings import DEFAULT_FORMATS, Settings

CAP = Settings().max_image_bytes
MIB = 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name, (ext, make) in corpus.FAMILIES.items():
        data = make(CAP)
        assert len(data) <= CAP
        (root / f"{name}.{ext}").write_bytes(data)
    (root / "huge-rgba.png").write_bytes(corpus.huge_rgba_png())
    shutil.copy(SAMPLES / "cat.jpg", root / "cat.jpg")
    return root


@pytest.fixture(scope="module")
def sandboxed(workers: WorkerFactory, corpus_root: Path) -> Iterator[WorkerProcess]:
    """A worker at default decode settings, over the corpus."""
    worker = workers.start(IMAGE_ROOT=str(corpus_root), MODEL="sleep:5ms")
    yield worker
    worker.stop()


def job_line(worker: WorkerProcess, task_id: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        for line in worker.log().splitlines():
            if " job {" in line and task_id in line:
                found: dict[str, object] = json.loads(line.split(" job ", 1)[1])
                return found
        return None

    line: dict[str, object] = wait_for(find, 10, "the job's log line")
    return line


@pytest.mark.slow
def test_every_crafted_file_fails_fast_with_a_named_error_and_bounded_memory(
    sandboxed: WorkerProcess, client: Client, corpus_root: Path
) -> None:
    assert client.result(client.submit("cat.jpg"), timeout=60)["source"] == "cat.jpg"
    rss_before = status_kib(sandboxed.pid, "VmRSS")
    peak_before = status_kib(sandboxed.pid, "VmHWM")
    report = []
    for name, (ext, _make) in corpus.FAMILIES.items():
        task_id = client.submit(f"{name}.{ext}")
        with pytest.raises(JobFailed) as failure:
            client.result(task_id, timeout=60)
        line = job_line(sandboxed, task_id)
        elapsed = float(str(line["elapsed_ms"]))
        report.append(f"{name}: {failure.value.error_type} in {elapsed:.0f} ms")
        assert failure.value.error_type in ("DecodeTimeout", "TooLarge"), report[-1]
        # The deadline is ~1 s; unbounded, these files take minutes. 5 s leaves room for a
        # loaded machine (2.45 s seen with five test runs sharing two cores).
        assert elapsed < 5000, report[-1]
    grown_peak = (status_kib(sandboxed.pid, "VmHWM") - peak_before) / 1024
    grown = (status_kib(sandboxed.pid, "VmRSS") - rss_before) / 1024
    children = sum(status_kib(c, "VmRSS") for c in children_of(sandboxed.pid)) / 1024
    print(
        "\n".join(report),
        f"\nworker peak +{grown_peak:.0f} MiB, now +{grown:.0f} MiB;"
        f" decode processes {children:.0f} MiB",
    )
    assert grown < 100  # the worker's own memory, after the whole corpus
    assert grown_peak < 100 + CAP / MIB  # at most one file's bytes were ever held at once
    assert sandboxed.alive()
    assert client.result(client.submit("cat.jpg"), timeout=60)["source"] == "cat.jpg"


@pytest.mark.slow
def test_sixteen_huge_images_at_once_wait_for_the_budget_and_all_succeed(
    sandboxed: WorkerProcess, client: Client
) -> None:
    peak_before = status_kib(sandboxed.pid, "VmHWM")
    ids = client.submit_many(["huge-rgba.png"] * 16, top_k=1)
    peak_children = 0
    deadline = time.monotonic() + 240
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        kids = children_of(sandboxed.pid)
        peak_children = max(peak_children, sum(status_kib(c, "VmRSS") for c in kids if _alive(c)))
        pending -= {o.task_id for o in client._fetch(list(pending)) if o.done}
        time.sleep(0.2)
    outcomes = {o.task_id: o for o in client._fetch(ids)}
    assert all(o.state == "SUCCESS" for o in outcomes.values()), [
        (o.state, o.error_message) for o in outcomes.values() if o.state != "SUCCESS"
    ][:2]
    grown = (status_kib(sandboxed.pid, "VmHWM") - peak_before) / 1024
    print(
        f"\n16 x 64 MP RGBA: worker peak +{grown:.0f} MiB, decode processes at most "
        f"{peak_children / 1024:.0f} MiB together"
    )
    assert grown < 200  # the decoded pixels never entered the worker
    limits = default_limits(0, 0, 1.0, 0.1)  # the defaults the worker sized
    assert peak_children * 1024 <= limits.processes * limits.memory_limit


def _alive(pid: int) -> bool:
    try:
        return status_kib(pid, "VmRSS") >= 0
    except (OSError, KeyError):
        return False


def test_the_memory_limit_is_a_setting(workers: WorkerFactory, corpus_root: Path) -> None:
    worker = workers.start(
        IMAGE_ROOT=str(corpus_root),
        MODEL="sleep:5ms",
        DECODE_MEMORY_LIMIT=str(256 * MIB),
        extra_args=["-Q", "small-memory"],  # not the module's other worker
    )
    try:
        with Client(workers.base_env["REDIS_URL"], queue="small-memory") as c:
            with pytest.raises(JobFailed) as failure:
                c.result(c.submit("huge-rgba.png"), timeout=60)
            assert failure.value.error_type == "TooLarge"
            assert "DECODE_MEMORY_LIMIT (256 MiB)" in failure.value.message
            assert c.result(c.submit("cat.jpg"), timeout=60)["source"] == "cat.jpg"
    finally:
        worker.stop()


# -- the pool in-process --------------------------------------------------------------------


def test_a_deadline_and_a_crash_cost_one_job_and_the_pool_recovers() -> None:
    pool = DecodePool(Limits(1, 0, timeout=0.3, seconds_per_megapixel=0.0))
    cat = (SAMPLES / "cat.jpg").read_bytes()
    kwargs = {"max_pixels": 64_000_000, "allowed_formats": DEFAULT_FORMATS, "draft_size": None}
    try:
        assert pool.decode(cat, resize=None, **kwargs).image.size == (451, 300)
        started = time.monotonic()
        with pytest.raises(DecodeTimeout):
            pool.decode(corpus.png_chunk_flood(8 * MIB), resize=None, **kwargs)
        assert time.monotonic() - started < 1.5
        assert pool.decode(cat, resize=232, **kwargs).image.size == (348, 232)
        cut = pool.decode_cropped(  # the model's input only
            cat,
            max_pixels=64_000_000,
            allowed_formats=DEFAULT_FORMATS,
            draft_size=None,
            resize=232,
            crop=224,
        )
        assert isinstance(cut, Cropped) and len(cut.pixels) == 224 * 224 * 3

        def crash_soon() -> None:
            time.sleep(0.1)
            for pid in pool.pids():
                os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=crash_soon)
        killer.start()
        with pytest.raises((NotAnImage, DecodeTimeout)):
            pool.decode(corpus.tiff_strip_table(8 * MIB), resize=None, **kwargs)
        killer.join()
        assert pool.decode(cat, resize=None, **kwargs).width == 451  # a fresh child
    finally:
        pool.close()


def test_a_chunk_of_images_costs_only_its_culprit() -> None:
    """Bulk messages decode several images per round trip; a crafted one among them still
    fails alone (its deadline ends the child, the rest are decoded again one at a time)."""
    pool = DecodePool(Limits(1, 0, timeout=0.3, seconds_per_megapixel=0.0))
    cat = (SAMPLES / "cat.jpg").read_bytes()
    kwargs = {"max_pixels": 64_000_000, "allowed_formats": DEFAULT_FORMATS, "draft_size": None}

    def chunk(*datas: bytes) -> list[Fetched]:
        return [Fetched(d, "file", "x") for d in datas]

    try:
        fine = pool.decode_many(chunk(cat, b"not an image", cat), resize=232, **kwargs)
        assert [type(r).__name__ for r in fine] == ["Decoded", "NotAnImage", "Decoded"]
        assert fine[0].image.size == (348, 232)  # type: ignore[union-attr]
        before = set(pool.pids())
        flood = corpus.png_chunk_flood(8 * MIB)
        started = time.monotonic()
        mixed = pool.decode_many(chunk(cat, flood, cat), resize=None, **kwargs)
        assert [type(r).__name__ for r in mixed] == ["Decoded", "DecodeTimeout", "Decoded"]
        assert time.monotonic() - started < 3.0
        assert set(pool.pids()) != before  # the child that ran out of time was replaced
        assert pool.decode(cat, resize=None, **kwargs).width == 451
    finally:
        pool.close()
