"""`python -m bench.cli_bulk [--images N] [--rounds R]`: bulk against single messages, end to end.

What a user runs: `imgqueue submit --wait DIR` over N small JPEGs (default 1,500, made here from
the sample photos at 96x64), against one worker with the zero-latency stand-in model on a
private redis-server, with the default 64 images per message and with `--bulk-size 1`,
alternating for `--rounds` rounds. Prints images/s of each (from the CLI's start to its exit)
and the ratio bulk/single.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_images(into: Path, count: int) -> None:
    from bench.images import SAMPLES

    into.mkdir(parents=True)
    samples = [Image.open(p).convert("RGB").resize((96, 64)) for p in sorted(SAMPLES.glob("*.jpg"))]
    for i in range(count):
        samples[i % len(samples)].save(into / f"img{i:05d}.jpg", quality=85)


def run_cli(images: Path, redis_url: str, bulk_size: int) -> float:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "producer", "submit", "--wait", "--bulk-size", str(bulk_size), "."],
        cwd=images,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"imgqueue exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    from tests.support.redis_server import RedisServer
    from tests.support.workers import WorkerProcess

    p = argparse.ArgumentParser(prog="python -m bench.cli_bulk", description=__doc__)
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgqueue-cli-bulk-"))
    images = work / "images"
    make_images(images, args.images)
    server = RedisServer(work / "redis").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env.update(
        REDIS_URL=server.url(0),
        MODEL="sleep:0ms",
        MODEL_WEIGHTS="random:0",
        IMAGE_ROOT=str(images),
        PYTHONPATH=str(ROOT),
    )
    worker = WorkerProcess(env, work / "worker.log", "cli-bulk", root=ROOT)
    rates: dict[str, list[float]] = {"single": [], "bulk": []}
    try:
        worker.wait_ready(timeout=180)
        run_cli(images, server.url(0), 64)  # warm-up
        for _ in range(args.rounds):
            for name, size in (("single", 1), ("bulk", 64)):
                rates[name].append(args.images / run_cli(images, server.url(0), size))
    finally:
        worker.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.images} JPEGs of 96x64, `imgqueue submit --wait`, one worker, stand-in model")
    for name, runs in rates.items():
        print(f"{name:>6}: " + ", ".join(f"{r:.1f}" for r in runs) + " images/s")
    ratio = statistics.median(rates["bulk"]) / statistics.median(rates["single"])
    print(f"bulk / single (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
