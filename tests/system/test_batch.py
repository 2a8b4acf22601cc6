"""`imgqueue batch` end to end, as a user runs it (a process), against two stand-in workers:
3,000 tiny images with the batch killed twice (SIGKILL, after some rows were written) and
resumed; failures as rows and exit status 1, with Parquet output; an object-store prefix to an
object-store output (the loopback S3)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from PIL import Image

from tests.support.paths import ROOT
from tests.support.s3 import BUCKET, S3, SET_IMAGES
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory

IMAGES = 3000


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IMAGES names of one 8x8 PNG (hard links: no disk per image), a text file named .png."""
    root = tmp_path_factory.mktemp("batch-images")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    first = root / "i00000.png"
    first.write_bytes(buf.getvalue())
    for i in range(1, IMAGES):
        os.link(first, root / f"i{i:05d}.png")
    (root / "text.png").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def fleet(workers: WorkerFactory, image_dir: Path, s3: S3) -> WorkerFactory:
    """Two stand-in workers on IMAGE_ROOT=image_dir that can read the loopback S3."""
    workers.base_env.update(s3.env, IMAGE_ROOT=str(image_dir))  # this module's workers only
    started = [workers.start(False, MODEL="sleep:0ms", MODEL_WEIGHTS="random:0") for _ in "ab"]
    for worker in started:
        worker.wait_ready()
    return workers


def batch(
    redis_url: str, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "producer", "batch", *args],
        cwd=cwd,
        env=full,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = process.communicate(timeout=90)
    return process.returncode, err


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_at(process: subprocess.Popen[str], out: Path, rows: int) -> None:
    """SIGKILL once `out` has `rows` rows."""
    wait_for(lambda: lines(out) >= rows or process.poll() is not None, 60, f"{rows} rows")
    assert process.poll() is None, f"the batch ended before its kill at {rows} rows"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)  # its pipes closed


def test_a_batch_killed_twice_resumes_to_exactly_one_row_per_source(
    fleet: WorkerFactory, image_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.txt"
    sources = [f"i{i:05d}.png" for i in range(IMAGES)]
    manifest.write_text("".join(f"{s}\n" for s in sources))
    out = tmp_path / "out.jsonl"
    args: tuple[str, ...] = ("manifest.txt", "--out", "out.jsonl")
    kills = []
    for _ in range(2):
        at = lines(out) + random.randint(200, 800)
        kills.append(at)
        kill_at(batch(redis_url, tmp_path, *args), out, at)
        args = ("--resume", "out.jsonl")
    code, err = finish(batch(redis_url, tmp_path, *args))
    assert code == 0, (kills, err)
    assert f"{IMAGES} rows in out.jsonl: {IMAGES} SUCCESS" in err, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    journal = json.loads((tmp_path / "out.jsonl.batch").read_text())
    by_index = {int(r["id"].rsplit("-", 1)[1]): r for r in rows}
    assert len(rows) == len(by_index) == IMAGES, kills  # one row per source, none twice
    assert all(r["id"] == f"{journal['batch']}-{i}" for i, r in by_index.items())
    assert [by_index[i]["source"] for i in range(IMAGES)] == sources
    assert {r["state"] for r in rows} == {"SUCCESS"}
    assert by_index[7]["result"]["source"] == "i00007.png"
    assert journal["finished"] and journal["total"] == IMAGES
    r = redis.Redis.from_url(redis_url)
    left = list(r.scan_iter(f"celery-task-meta-{journal['batch']}-*", count=1000))
    r.close()
    assert not left, f"{len(left)} result keys left"


def test_failures_are_rows_with_their_error_types_and_exit_1_in_parquet(
    fleet: WorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    sources = ["i00001.png", "missing-1.png", "text.png", "bad\tname.png", "i00002.png"]
    process = batch(redis_url, tmp_path, "-", "--out", "run.parquet", "--top-k", "1")
    _, err = process.communicate("\n".join(sources) + "\n", timeout=90)
    assert process.returncode == 1, err
    assert "3 failed:" in err and "SourceNotFound 1" in err and "InvalidArguments 1" in err
    table = pq.read_table(tmp_path / "run.parquet").to_pylist()
    assert [row["source"] for row in table] == sources
    assert [row["index"] for row in table] == list(range(len(sources)))
    assert [row["error_type"] for row in table] == [
        None,
        "SourceNotFound",
        "NotAnImage",
        "InvalidArguments",
        None,
    ]
    assert len(json.loads(table[0]["result"])["predictions"]) == 1
    assert not (tmp_path / "run.parquet.partial.jsonl").exists()  # converted, then removed


def test_an_object_store_prefix_to_an_object_store_output(
    fleet: WorkerFactory, s3: S3, redis_url: str, tmp_path: Path
) -> None:
    out = s3.url("runs/set.jsonl")
    code, err = finish(batch(redis_url, tmp_path, s3.url("set/"), "--out", out, env=s3.env))
    assert code == 0, err
    body = s3.client.get_object(Bucket=BUCKET, Key="runs/set.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert sorted(r["source"] for r in rows) == [s3.url(key) for key in SET_IMAGES]
    assert not list(tmp_path.glob("imgqueue-batch-*.jsonl"))  # uploaded, then removed
    code, err = finish(batch(redis_url, tmp_path, s3.url("set/"), "--out", out, env=s3.env))
    assert code == 0 and "going on with batch" in err  # the same batch, finished: said again
