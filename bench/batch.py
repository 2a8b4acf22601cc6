"""`python -m bench.batch [--images N] [--workers W] [--kills K]`: `imgqueue batch` at scale.

N tiny images (one 8x8 PNG under N names: hard links, 10,000 to a directory; default
1,000,000) through W stand-in worker processes (`MODEL=sleep:0ms`, default 4) on a private
redis-server, twice in one run:

1. `imgqueue batch manifest.txt --out out.jsonl` as a user runs it (a process), killed with
   SIGKILL K times (default 2, spread evenly over the rows) and resumed with `--resume`;
   then the output is checked: exactly N rows, one per source, every one SUCCESS.
2. The same images with `Client.submit_many` then `Client.wait` over all of them, in this
   process (the baseline: no output file, results left in Redis, then deleted).

Prints the rows, each phase's wall time and rate, the throughput ratio batch / baseline, and
the peak Redis `used_memory` of each phase (INFO memory, sampled every 50 ms in a thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
PER_DIR = 10_000


def make_images(root: Path, count: int) -> list[str]:
    """`count` names of one tiny PNG, as paths under `root` (IMAGE_ROOT)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    names = []
    for i in range(count):
        name = f"d{i // PER_DIR:03d}/i{i:07d}.png"
        if i % PER_DIR == 0:  # a file of its own per directory: a file has 65,000 links at most
            (root / name).parent.mkdir(parents=True)
            (root / name).write_bytes(buf.getvalue())
            first = root / name
        else:
            os.link(first, root / name)
        names.append(name)
    return names


@contextmanager
def peak_memory(url: str) -> Iterator[list[int]]:
    """The highest `used_memory` seen while the block runs (in the list yielded, once done)."""
    client = redis.Redis.from_url(url)
    peak = [int(client.info("memory")["used_memory"])]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], int(client.info("memory")["used_memory"]))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        client.close()


def rows_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def run_batch(work: Path, url: str, total: int, kills: int) -> tuple[float, int]:
    """The batch, killed `kills` times; returns its wall time and the kills done."""
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    out = work / "out.jsonl"
    args = ["manifest.txt", "--out", "out.jsonl"]
    started, done = time.perf_counter(), 0
    for k in range(1, kills + 2):
        process = subprocess.Popen(
            [sys.executable, "-m", "producer", "batch", *args],
            cwd=work,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        args = ["--resume", "out.jsonl"]
        if k <= kills:
            at = total * k // (kills + 1)
            while rows_in(out) < at and process.poll() is None:
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                done += 1
            process.communicate()
            continue
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"imgqueue batch exited {process.returncode}: {err[-2000:]}")
        print(err.strip().splitlines()[-1], flush=True)
    return time.perf_counter() - started, done


def check_rows(path: Path, total: int) -> int:
    seen = bytearray(total)
    with path.open("rb") as rows:
        for line in rows:
            row = json.loads(line)
            index = int(row["id"].rsplit("-", 1)[1])
            if seen[index] or row["state"] != "SUCCESS":
                raise RuntimeError(f"row {index} twice or not SUCCESS: {line[:200]!r}")
            seen[index] = 1
    if not all(seen):
        raise RuntimeError(f"{total - sum(seen)} sources have no row")
    return total


def run_baseline(url: str, sources: list[str]) -> float:
    from producer import Client

    with Client(url) as client:
        started = time.perf_counter()
        ids = client.submit_many(sources)
        ended = sum(1 for _ in client.wait(ids))
        seconds = time.perf_counter() - started
        assert ended == len(sources)
        raw = client.results
        for i in range(0, len(ids), 5000):
            raw.unlink(*[client.config.result_key(t) for t in ids[i : i + 5000]])
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kills", type=int, default=2)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgqueue-bench-batch-"))
    try:
        measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, args: argparse.Namespace) -> None:
    from bench.machine import cpu_name
    from tests.support.redis_server import RedisServer
    from tests.support.workers import WorkerProcess

    t0 = time.perf_counter()
    sources = make_images(work / "images", args.images)
    (work / "manifest.txt").write_text("".join(f"{s}\n" for s in sources))
    print(f"{args.images} images made in {time.perf_counter() - t0:.1f}s", flush=True)
    server = RedisServer(work / "redis").start()
    url = server.url(0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env.update(
        REDIS_URL=url,
        MODEL="sleep:0ms",
        MODEL_WEIGHTS="random:0",
        IMAGE_ROOT=str(work / "images"),
        PYTHONPATH=str(ROOT),
    )
    workers = [
        WorkerProcess(env, work / f"w{i}.log", f"batch-{i}", root=ROOT) for i in range(args.workers)
    ]
    try:
        for worker in workers:
            worker.wait_ready(timeout=300)
        run_baseline(url, sources[: min(len(sources), 5000)])  # warm-up
        with peak_memory(url) as batch_peak:
            batch_s, kills = run_batch(work, url, args.images, args.kills)
        rows = check_rows(work / "out.jsonl", args.images)
        (work / "out.jsonl").unlink()
        with peak_memory(url) as base_peak:
            base_s = run_baseline(url, sources)
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
    n = args.images
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); {args.workers} stand-in workers")
    print(f"batch:    {rows} rows, exactly one per source, {kills} SIGKILLs and resumes")
    print(
        f"batch:    {batch_s:.1f}s, {n / batch_s:.0f} images/s, peak used_memory "
        f"{batch_peak[0] / 2**20:.1f} MiB"
    )
    print(
        f"baseline: {base_s:.1f}s, {n / base_s:.0f} images/s (submit_many + wait), peak "
        f"used_memory {base_peak[0] / 2**20:.1f} MiB"
    )
    print(f"ratio batch / baseline: {base_s / batch_s:.2f}")


if __name__ == "__main__":
    main()
