"""`python -m bench.overhead [--jobs N] [KEY=VALUE ...]`: the queue's own cost per job.

One worker with the zero-latency stand-in model (`MODEL=sleep:0ms` unless given), N jobs of the
sample photos pushed at once; prints jobs/s and the CPU time per job of the worker process and
of redis-server (from /proc, Linux only). KEY=VALUE pairs go to the worker's environment, e.g.
`MAX_BATCH_SIZE=1` or `TASK_EVENTS=true`, to compare settings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench.images import SAMPLES
from bench.service import Cluster


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    p.add_argument("--jobs", type=int, default=400)
    p.add_argument("env", nargs="*", help="KEY=VALUE settings for the worker")
    args = p.parse_args()
    overrides = {"MODEL": "sleep:0ms", **dict(item.split("=", 1) for item in args.env)}
    work = Path(tempfile.mkdtemp(prefix="imgqueue-overhead-"))
    root = work / "images"
    (root / "samples").mkdir(parents=True)
    samples = sorted(SAMPLES.glob("*.jpg"))
    for sample in samples:
        shutil.copy(sample, root / "samples" / sample.name)
    names = [f"samples/{s.name}" for s in samples]
    jobs = (names * (args.jobs // len(names) + 1))[: args.jobs]
    cluster = Cluster(work, root)
    try:
        with cluster.workers(1, **overrides) as (worker,):
            cluster.burst(names * 4)  # warm-up: threads, connections
            redis_pid = cluster.redis.proc.pid if cluster.redis.proc else None
            w0 = cpu_seconds(worker.pid)
            r0 = cpu_seconds(redis_pid) if redis_pid else 0.0
            run = cluster.burst(jobs)
            worker_ms = (cpu_seconds(worker.pid) - w0) * 1000 / run.jobs
            redis_ms = ((cpu_seconds(redis_pid) - r0) if redis_pid else 0.0) * 1000 / run.jobs
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"settings: {overrides}")
    print(f"{run.jobs} jobs, {run.failed} failed: {run.throughput:.1f} jobs/s")
    print(f"CPU per job: worker {worker_ms:.2f} ms, redis-server {redis_ms:.2f} ms")


if __name__ == "__main__":
    main()
