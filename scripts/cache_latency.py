"""Measure the result cache: latency of a hit against a miss, end to end and inside the worker.

    .venv/bin/python scripts/cache_latency.py [--jobs 20]

Starts a private redis-server and one real worker (random:0 weights, IMAGE_ROOT=samples/),
then submits jobs one at a time: first `--jobs` misses (each with a different top_k, which is
part of the cache key, so every one runs the model), then the same jobs again (all hits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer import Client  # noqa: E402
from tests.support.paths import SAMPLES  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.workers import WorkerFactory  # noqa: E402


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"{name:<26} median {statistics.median(values):8.2f} ms   p90 {p90:8.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--image", default="cat.jpg")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
        env.update(
            REDIS_URL=redis_server.url(0),
            MODEL_WEIGHTS="random:0",
            IMAGE_ROOT=str(SAMPLES),
            DEVICE="cpu",
            PRECISION="fp32",
            PYTHONPATH=str(ROOT),
        )
        workers = WorkerFactory(env, Path(tmp))
        try:
            workers.start()
            with Client(redis_server.url(0)) as client:
                client.result(client.submit(ns.image, top_k=999), timeout=120)  # warm
                rows: dict[str, list[float]] = {}
                for phase in ("miss", "hit"):
                    for k in range(1, ns.jobs + 1):
                        started = time.perf_counter()
                        result = client.result(client.submit(ns.image, top_k=k), timeout=120)
                        elapsed = (time.perf_counter() - started) * 1000.0
                        assert result["cached"] is (phase == "hit"), result["cached"]
                        rows.setdefault(f"{phase}: end to end", []).append(elapsed)
                        rows.setdefault(f"{phase}: in worker", []).append(
                            result["timings_ms"]["total"]
                        )
            print(f"{ns.jobs} sequential jobs per phase, image {ns.image}, CPU, one worker")
            for name, values in rows.items():
                print(summary(name, values))
        finally:
            workers.stop_all()
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
