"""`python -m bench.batches`: this project's worker against a celery-batches worker, one run.

Both workers read the same JPEGs through the same private redis-server; each gets a warm-up,
then one burst (every job submitted at once) is timed from the first submit to the last
stored result (the worker's own `date_done`). celery-batches is not a dependency: install it
beside the venv and put it on PYTHONPATH for this script only, e.g.

    .venv/bin/pip install --no-deps --target /tmp/celery-batches-pkg celery-batches==0.11
    PYTHONPATH=/tmp/celery-batches-pkg .venv/bin/python -m bench.batches --model sleep:0ms

The worker processes it starts get the same PYTHONPATH (bench/batches_app.py is their app).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.images import SIZES, make_set
from bench.service import Cluster, Run, ids_keys
from core.contract import DEFAULT_QUEUE, TASK_NAME
from tests.support.paths import ROOT
from tests.support.workers import WorkerProcess

PIP = "pip install --no-deps --target /tmp/celery-batches-pkg celery-batches==0.11"
QUEUE = "imgqueue-batches"  # bench/batches_app.py's queue; not imported here (no torch)
TASK = "imgqueue.classify_batches"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.batches", description=__doc__)
    p.add_argument("--images", type=int, default=128, help="JPEGs per size (default 128)")
    p.add_argument("--model", default="resnet50", help="resnet50 or a stand-in, sleep:0ms")
    p.add_argument("--precision", default="int8", help="comma-separated, e.g. int8,bf16")
    p.add_argument("--sizes", default="1024x768", help=f"comma-separated from {list(SIZES)}")
    p.add_argument("--batch-size", type=int, default=8, help="MAX_BATCH_SIZE and flush_every")
    p.add_argument("--flush-ms", type=float, default=10.0, help="celery-batches flush_interval")
    p.add_argument(
        "--pools",
        default="solo,threads:1,threads:2",
        help="celery-batches pools to measure, as pool[:concurrency]",
    )
    p.add_argument("--prefetch", type=int, default=0, help="messages held (0: 2 x batch)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args()


def batches_path() -> str:
    """The directory that holds celery_batches, or exit saying how to install it."""
    spec = importlib.util.find_spec("celery_batches")
    if spec is None or spec.origin is None:
        sys.exit(
            "celery_batches is not importable. Install it beside the venv (it declares "
            "celery<5.7, so without its dependencies) and put it on PYTHONPATH:\n"
            f"    .venv/bin/{PIP}\n"
            "    PYTHONPATH=/tmp/celery-batches-pkg .venv/bin/python -m bench.batches"
        )
    return str(Path(spec.origin).resolve().parent.parent)


@dataclass
class Row:
    worker: str
    model: str
    size: str
    run: Run
    batches: Counter[int] = field(default_factory=Counter)  # batch size -> how many batches

    @property
    def mean_batch(self) -> float:
        jobs = sum(size * n for size, n in self.batches.items())
        return jobs / max(1, sum(self.batches.values()))

    def histogram(self) -> str:
        return " ".join(f"{size}x{n}" for size, n in sorted(self.batches.items(), reverse=True))


def batch_sizes(cluster: Cluster, ids: list[str]) -> Counter[int]:
    """Batches formed, from the results: by batch id where stored, else jobs / batch size."""
    by_id: dict[str, int] = {}
    jobs_at: Counter[int] = Counter()
    for raw in cluster.client.redis.mget(ids_keys(ids)):
        result = json.loads(raw)["result"] if raw else None
        if not isinstance(result, dict) or "batch_size" not in result:
            continue
        if "batch_id" in result:
            by_id[result["batch_id"]] = int(result["batch_size"])
        else:
            jobs_at[int(result["batch_size"])] += 1
    if by_id:
        return Counter(by_id.values())
    return Counter({size: round(n / size) for size, n in jobs_at.items()})


def burst(cluster: Cluster, names: list[str], task: str, queue: str) -> tuple[Run, list[str]]:
    """Cluster.burst, for any task name and queue; also returns the task ids."""
    submitted: dict[str, float] = {}
    celery = cluster.client.celery
    first = time.time()
    with celery.producer_or_acquire() as producer:
        for name in names:
            res = celery.send_task(
                task,
                args=[name],
                kwargs={"top_k": 5},
                queue=queue,
                producer=producer,
                headers={"sent_at": time.time()},
            )
            submitted[res.id] = time.time()
    return cluster._collect(submitted, first), list(submitted)


def batches_worker(
    env: dict[str, str], log: Path, name: str, pool: str, conc: int
) -> WorkerProcess:
    """`celery -A bench.batches_app worker -P <pool> -c <n>`, logging to a file."""
    extra = ["-P", pool, "-c", str(conc)]
    return WorkerProcess(env, log, name, extra_args=extra, app="bench.batches_app")


def measure_ours(
    cluster: Cluster, names: list[str], model: str, precision: str, batch: int
) -> tuple[Run, Counter[int]]:
    with cluster.workers(1, MODEL=model, PRECISION=precision, MAX_BATCH_SIZE=str(batch)):
        burst(cluster, names[: 2 * batch], TASK_NAME, DEFAULT_QUEUE)  # warm-up: threads, shapes
        run, ids = burst(cluster, names, TASK_NAME, DEFAULT_QUEUE)
        return run, batch_sizes(cluster, ids)


def measure_batches(
    cluster: Cluster,
    names: list[str],
    env: dict[str, str],
    pool: str,
    conc: int,
    label: str,
) -> tuple[Run, Counter[int], str]:
    redis.Redis.from_url(cluster.redis.url(0)).flushdb()
    log = cluster.workdir / f"batches-{label}.log"
    worker = batches_worker(env, log, f"batches-{label}", pool, conc)
    try:
        worker.wait_ready(timeout=180)
        batch = int(env["MAX_BATCH_SIZE"])
        # Warm-up: builds the model in the task thread; one bad job must fail alone.
        warm, _ = burst(cluster, [*names[: 2 * batch - 1], "no/such/file.jpg"], TASK, QUEUE)
        if warm.failed != 1:
            raise RuntimeError(f"warm-up: {warm.failed} of {warm.jobs} jobs failed, expected 1")
        run, ids = burst(cluster, names, TASK, QUEUE)
        return run, batch_sizes(cluster, ids), worker.log()
    finally:
        worker.stop()


def main() -> None:
    args = parse_args()
    pkg = batches_path()
    pools = []
    for spec in args.pools.split(","):
        pool, _, conc = spec.strip().partition(":")
        pools.append((pool, int(conc or 1)))
    standin = args.model.startswith("sleep:")
    precisions = ["auto"] if standin else [p.strip() for p in args.precision.split(",")]
    work = Path(tempfile.mkdtemp(prefix="imgqueue-batches-"))
    root = work / "images"
    started = time.perf_counter()
    sizes = [s.strip() for s in args.sizes.split(",")]
    names = {size: make_set(root, size, args.images) for size in sizes}
    print(f"made {args.images} JPEGs per size in {time.perf_counter() - started:.1f}s")
    batch = args.batch_size
    prefetch = args.prefetch or 2 * batch
    rows: list[tuple[str, str, Row, list[Row]]] = []
    cluster = Cluster(work, root)
    try:
        for precision in precisions:
            label = args.model if standin else f"{args.model} {precision}"
            extra = {} if standin else {"PRECISION": precision}
            for size in sizes:
                files = names[size]
                run, formed = measure_ours(cluster, files, args.model, precision, batch)
                ours = Row("ours", label, size, run, formed)
                print(f"{label} {size} ours: {run.throughput:.1f} img/s", flush=True)
                theirs = []
                for pool, conc in pools:
                    env = cluster.env(
                        MODEL=args.model,
                        MAX_BATCH_SIZE=str(batch),
                        PYTHONPATH=f"{ROOT}:{pkg}",
                        BATCHES_FLUSH_MS=str(args.flush_ms),
                        BATCHES_CONCURRENCY=str(conc),
                        BATCHES_PREFETCH=str(prefetch),
                        **extra,
                    )
                    tag = f"{pool}-c{conc}"
                    brun, bformed, _ = measure_batches(cluster, files, env, pool, conc, tag)
                    theirs.append(
                        Row(f"celery-batches {pool} -c {conc}", label, size, brun, bformed)
                    )
                    print(f"{label} {size} {tag}: {brun.throughput:.1f} img/s", flush=True)
                rows.append((label, size, ours, theirs))
    finally:
        cluster.close()

    print(
        f"\n{args.images} images per run, batch {batch}, flush_interval {args.flush_ms:g} ms, "
        f"celery-batches prefetch {prefetch}\n"
    )
    header = f"{'model':<18} {'size':<9} {'worker':<28} {'img/s':>7} {'ratio':>6} "
    print(header + f"{'p50 ms':>7} {'mean batch':>10}  batches formed")
    out = []
    for label, size, ours, theirs in rows:
        base = ours.run.throughput
        for row in [ours, *theirs]:
            tp = row.run.throughput
            p50 = row.run.percentile(50) * 1e3
            print(
                f"{label:<18} {size:<9} {row.worker:<28} {tp:>7.1f} {tp / base:>6.2f} "
                f"{p50:>7.0f} {row.mean_batch:>10.2f}  {row.histogram()}"
            )
            out.append(
                {
                    "model": label,
                    "size": size,
                    "worker": row.worker,
                    "images_per_s": round(tp, 2),
                    "ratio_to_ours": round(tp / base, 3),
                    "p50_ms": round(p50, 1),
                    "failed": row.run.failed,
                    "batches": dict(row.batches),
                }
            )
    print("(ratio: img/s over ours; ours' batches are jobs / batch size, from the results)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def _sigterm(*_: Any) -> None:
    raise KeyboardInterrupt  # run the finally blocks: stop workers and redis


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm)
    main()
