"""`python -m bench.overhead [--jobs N] [--baseline REF] [KEY=VALUE ...]`: the queue's cost per job.

One worker with the zero-latency stand-in model (`MODEL=sleep:0ms` unless given), N jobs of the
sample photos pushed at once; prints jobs/s and the CPU time per job of the worker process (with
its decode processes) and of redis-server (from /proc, Linux only). KEY=VALUE pairs go to the
worker's environment, e.g. `MAX_BATCH_SIZE=1` or `TASK_EVENTS=true`, to compare settings.

`--bulk N` measures single-image messages against bulk messages of N images (`classify_many`),
alternating for `--rounds` rounds, and prints the ratios bulk/single.

`--baseline REF` also runs the workers of another commit (e.g. `--baseline HEAD~3`, extracted
with `git archive`), alternating baseline and current for `--rounds` rounds on the same Redis,
and prints the ratios current/baseline: the run's own answer to "did this change cost?".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.images import SAMPLES
from bench.service import Cluster
from tests.support.paths import ROOT


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of its live child processes
    (the decode processes), plus the children it has already reaped."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cost:
    jobs_per_s: float
    worker_ms: float  # worker CPU per job
    redis_ms: float  # redis-server CPU per job
    failed: int


def measure(
    cluster: Cluster,
    root: Path,
    names: list[str],
    jobs: list[str],
    env: dict[str, str],
    bulk_size: int = 1,
) -> Cost:
    with cluster.workers(1, root=root, **env) as (worker,):
        cluster.burst(names * 4, bulk_size)  # warm-up: threads, connections
        redis_pid = cluster.redis.proc.pid if cluster.redis.proc else None
        w0 = cpu_seconds(worker.pid)
        r0 = cpu_seconds(redis_pid) if redis_pid else 0.0
        run = cluster.burst(jobs, bulk_size)
        worker_ms = (cpu_seconds(worker.pid) - w0) * 1000 / run.jobs
        redis_ms = ((cpu_seconds(redis_pid) - r0) if redis_pid else 0.0) * 1000 / run.jobs
    return Cost(run.throughput, worker_ms, redis_ms, run.failed)


def checkout(ref: str, into: Path) -> Path:
    """The tree of `ref`, extracted (no .git), to run its workers from."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    p.add_argument("--jobs", type=int, default=400)
    p.add_argument("--baseline", default=None, help="a git ref to compare against")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    p.add_argument("--bulk", type=int, default=0, help="compare with bulk messages of N images")
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
    # name -> (tree, images per message)
    runs_of: dict[str, tuple[Path, int]] = {"current": (ROOT, 1)}
    if args.baseline:
        base = checkout(args.baseline, work / "baseline")
        runs_of = {"baseline": (base, 1), "current": (ROOT, 1)}
    elif args.bulk > 1:
        runs_of = {"baseline": (ROOT, 1), "current": (ROOT, args.bulk)}
    rounds = args.rounds if len(runs_of) > 1 else 1
    costs: dict[str, list[Cost]] = {name: [] for name in runs_of}
    cluster = Cluster(work, root)
    try:
        for _ in range(rounds):
            for name, (tree, size) in runs_of.items():
                costs[name].append(measure(cluster, tree, names, jobs, overrides, size))
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"settings: {overrides}; {args.jobs} jobs per run, {rounds} round(s)")
    if args.bulk > 1 and not args.baseline:
        print(f"baseline: one image per message; current: {args.bulk} images per message")
    for name, runs in costs.items():
        for i, c in enumerate(runs):
            print(
                f"{name:>8} run {i + 1}: {c.jobs_per_s:6.1f} jobs/s, CPU per job: worker "
                f"{c.worker_ms:.2f} ms, redis-server {c.redis_ms:.2f} ms, {c.failed} failed"
            )
    if len(runs_of) > 1:
        med = {
            name: {
                "jobs/s": statistics.median(c.jobs_per_s for c in runs),
                "worker ms": statistics.median(c.worker_ms for c in runs),
                "redis ms": statistics.median(c.redis_ms for c in runs),
            }
            for name, runs in costs.items()
        }
        for key in ("jobs/s", "worker ms", "redis ms"):
            was, now = med["baseline"][key], med["current"][key]
            print(f"median {key:>9}: baseline {was:.2f}, current {now:.2f}, ratio {now / was:.3f}")


if __name__ == "__main__":
    main()
