"""`python -m bench.redis_cost [--jobs N] [--baseline REF] [--rounds R]`: Redis cost per image.

One worker with the zero-latency stand-in model (`MODEL=sleep:0ms`) on a private redis-server.
For bulk messages (64 images) and for one message per image it counts, from the first submit
to the last stored result (the producer included, result polling excluded: completion is read
from the worker's /metrics, not from Redis):

- Redis CPU per image (`INFO cpu`, user + system);
- commands per image (`INFO commandstats`, commands run inside scripts included), and the
  commands that make up most of them;
- bytes per image while queued (`used_memory` with N images queued and no worker), and bytes
  of a stored result (`MEMORY USAGE` of result keys);
- what `Client.wait` over the whole run adds to Redis CPU, per image waited on.

`--baseline REF` runs the same measurement from another commit's tree (this file is copied
into it), alternating baseline and current for `--rounds` rounds on fresh Redis servers, and
prints the ratios current/baseline. `--json` prints one run's figures as JSON.
`--results-apart` puts the results on a second redis-server (RESULT_URL) and reports each
server's CPU (commands, reads and bytes are then the broker's alone).
`--events` measures what completion events and groups cost (worker/events.py): first the
result store's script alone (Redis's own microseconds per image, no worker), then whole runs
alternating for `--rounds` rounds, events off (EVENTS_MAXLEN=0), on (the default), and on with
every submit a group (`submit_many(group=True)`), then the medians and the differences per
image, with the bytes the stream keeps per event and a group per image (`--jobs 0`: the
script alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
MODES = {"bulk": 64, "single": 1}


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    out = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    io = client.info("stats")
    # Reads: requests Redis read from a socket (a pipeline is one); bytes in and out.
    out["@reads"] = int(io.get("total_reads_processed", 0))
    out["@in_bytes"] = int(io["total_net_input_bytes"])
    out["@out_bytes"] = int(io["total_net_output_bytes"])
    return out


def _jobs_done(port: int) -> float:
    """Jobs the worker finished, from its /metrics: no Redis command to know it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("imgqueue_jobs_total{")
    )


def _wait_jobs(ports: list[int], target: float, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while sum(_jobs_done(port) for port in ports) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not finish {target:.0f} jobs in {timeout}s")
        time.sleep(0.05)


def measure(
    jobs: int,
    workdir: Path,
    apart: bool = False,
    workers: int = 1,
    env_extra: dict[str, str] | None = None,
    group: bool = False,
) -> dict[str, Any]:
    """One run's figures for every mode (see the module doc); `apart`: results on a second
    redis-server (RESULT_URL), each server's CPU reported on its own; `env_extra`: more
    worker settings; `group`: every measured submit is a group."""
    from bench.images import SAMPLES
    from core.contract import result_key
    from producer import Client
    from tests.support.ports import free_port
    from tests.support.redis_server import RedisServer
    from tests.support.workers import WorkerProcess

    root = workdir / "images"
    (root / "samples").mkdir(parents=True, exist_ok=True)
    names = []
    for sample in sorted(SAMPLES.glob("*.jpg")):
        shutil.copy(sample, root / "samples" / sample.name)
        names.append(f"samples/{sample.name}")
    sources = (names * (jobs // len(names) + 1))[:jobs]
    server = RedisServer(workdir / "redis").start()
    raw = redis.Redis.from_url(server.url(0))
    store = RedisServer(workdir / "results").start() if apart else server
    results = redis.Redis.from_url(store.url(0)) if apart else raw
    client = Client(server.url(0), **({"result_url": store.url(0)} if apart else {}))
    out: dict[str, Any] = {}
    try:
        for mode, size in MODES.items():
            raw.flushall()
            before = int(raw.info("memory")["used_memory"])
            client.submit_many(sources, bulk_size=size)
            queued = (int(raw.info("memory")["used_memory"]) - before) / jobs
            raw.flushall()
            results.flushall()
            ports = [free_port() for _ in range(workers)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
            env.update(
                REDIS_URL=server.url(0),
                MODEL="sleep:0ms",
                MODEL_WEIGHTS="random:0",
                IMAGE_ROOT=str(root),
                PYTHONPATH=str(ROOT),
                METRICS_ADDR="127.0.0.1",
            )
            if apart:
                env["RESULT_URL"] = store.url(0)
            env.update(env_extra or {})
            started = [
                WorkerProcess(
                    {**env, "METRICS_PORT": str(port)},
                    workdir / f"{mode}-{i}.log",
                    f"cost-{mode}-{i}",
                    root=ROOT,
                )
                for i, port in enumerate(ports)
            ]
            try:
                for worker in started:
                    worker.wait_ready(timeout=180)
                client.submit_many(names * 4, bulk_size=size)  # warm-up
                done = len(names) * 4
                _wait_jobs(ports, done)
                time.sleep(0.5)  # let the warm-up's acks and heartbeats settle
                figures: dict[str, list[float]] = {"cpu": [], "wait_cpu": []}
                counts: dict[str, int] = {}
                for waited in (False, True):
                    mem0 = int(raw.info("memory")["used_memory"])
                    cpu0, cmd0, rcpu0 = _cpu(raw), _commands(raw), _cpu(results)
                    ids = client.submit_many(sources, bulk_size=size, group=group)
                    if waited:
                        for _ in client.wait(ids, timeout=900):
                            pass
                    done += jobs
                    _wait_jobs(ports, done)
                    cpu1, cmd1, rcpu1 = _cpu(raw), _commands(raw), _cpu(results)
                    stored_cpu = (rcpu1 - rcpu0) if apart else 0.0
                    figures["wait_cpu" if waited else "cpu"].append(cpu1 - cpu0 + stored_cpu)
                    if apart and not waited:
                        figures["broker_cpu"] = [cpu1 - cpu0]
                        figures["results_cpu"] = [stored_cpu]
                    if not waited:
                        delta = {k: cmd1[k] - cmd0.get(k, 0) for k in cmd1}
                        io = {k: delta.pop(k) / jobs for k in ("@reads", "@in_bytes", "@out_bytes")}
                        counts = {k: v for k, v in delta.items() if k != "info" and v > 0}
                        sizes = [results.memory_usage(result_key(t)) or 0 for t in ids[:50]]
                        events = _stream_bytes(results) / jobs
                        grouped = _group_bytes(results, getattr(ids, "group_id", None)) / jobs
                        # Everything a finished image leaves: its result, its delivery
                        # counter (per message), minus the drained queue.
                        kept = (int(raw.info("memory")["used_memory"]) - mem0) / jobs
                failed = sum(1 for t in ids if b'"FAILURE"' in (results.get(result_key(t)) or b""))
            finally:
                for worker in started:
                    worker.stop()
            cpu = figures["cpu"][0]
            out[mode] = {
                "redis_cpu_ms": cpu * 1000 / jobs,
                "commands": sum(counts.values()) / jobs,
                "by_command": {k: v / jobs for k, v in sorted(counts.items(), key=lambda i: -i[1])},
                "reads": io["@reads"],
                "net_bytes": io["@in_bytes"] + io["@out_bytes"],
                "queued_bytes": queued,
                "result_bytes": statistics.mean(sizes),
                "kept_bytes": kept,
                "wait_cpu_ms": (figures["wait_cpu"][0] - cpu) * 1000 / jobs,
                "failed": failed,
                "event_bytes": events,
                "group_bytes": grouped,
            }
            if apart:
                out[mode]["broker_cpu_ms"] = figures["broker_cpu"][0] * 1000 / jobs
                out[mode]["results_cpu_ms"] = figures["results_cpu"][0] * 1000 / jobs
    finally:
        client.close()
        raw.close()
        server.stop()
        if apart:
            results.close()
            store.stop()
    return out


def _stream_bytes(client: redis.Redis) -> float:
    """Bytes the events stream holds (0 when events are off): the measured run's entries and
    the warm-up's few."""
    from core.lifecycle import EVENTS_STREAM

    return float(client.memory_usage(EVENTS_STREAM, samples=0) or 0)


def _group_bytes(client: redis.Redis, group_id: str | None) -> float:
    """Bytes a group's three keys hold (its hash, the done hash, the ids list)."""
    if group_id is None:
        return 0.0
    from producer.groups import keys

    return float(sum(client.memory_usage(k, samples=0) or 0 for k in keys(group_id)))


EVENT_RUNS = {
    "off": ({"EVENTS_MAXLEN": "0"}, False),
    "events": ({}, False),
    "events+group": ({}, True),
}


def script_cost(work: Path, images: int = 6400, rounds: int = 3) -> dict[str, dict[str, float]]:
    """What the result store's script itself costs per image (Redis's own `INFO commandstats`
    microseconds of EVALSHA, commands inside the script included; no worker, no queue): a
    bulk's 64 final states per call, and one state per call (single messages), for each of
    EVENT_RUNS, medians of `rounds` alternating rounds. Far less noisy than whole runs."""
    from types import SimpleNamespace

    from celery import Celery, states
    from celery.app.task import Context

    from core.contract import BULK_TASK_NAME, TASK_NAME
    from core.lifecycle import GROUP_HEADER
    from producer.groups import create
    from tests.support.redis_server import RedisServer

    server = RedisServer(work / "script-cost").start()
    raw = redis.Redis.from_url(server.url(0))
    result = {
        "predictions": [{"index": i, "label": f"class {i}", "probability": 0.1} for i in range(5)]
    }
    out: dict[str, dict[str, list[float]]] = {n: {"bulk": [], "single": []} for n in EVENT_RUNS}
    try:
        for _ in range(rounds):
            for name, (env, group) in EVENT_RUNS.items():
                for mode in ("bulk", "single"):
                    raw.flushall()
                    time.sleep(0.2)
                    app = Celery(
                        "script-cost", backend=f"worker.backend:ResultBackend+{server.url(0)}"
                    )
                    app.conf.result_expires = 3600
                    app.settings = SimpleNamespace(
                        events_maxlen=int(env.get("EVENTS_MAXLEN", 100_000))
                    )
                    backend = app.backend
                    ids = [f"{mode}-{i}" for i in range(images if mode == "bulk" else images // 8)]
                    headers = {}
                    if group:
                        create(raw, "g", ids, queue="celery")
                        headers = {GROUP_HEADER: "g"}
                    raw.config_resetstat()
                    if mode == "bulk":
                        for start in range(0, len(ids), 64):
                            chunk = ids[start : start + 64]
                            request = Context(
                                {
                                    "id": f"bulk-{start}",
                                    "task": BULK_TASK_NAME,
                                    "delivery_info": {"routing_key": "celery"},
                                    "args": [[{"id": i, "source": "x"} for i in chunk]],
                                    **headers,
                                }
                            )
                            backend.store_many(
                                [(i, result, states.SUCCESS) for i in chunk], request=request
                            )
                    else:
                        for task_id in ids:
                            request = Context(
                                {
                                    "id": task_id,
                                    "task": TASK_NAME,
                                    "delivery_info": {"routing_key": "celery"},
                                    **headers,
                                }
                            )
                            backend.store_result(task_id, result, states.SUCCESS, request=request)
                    stats = raw.info("commandstats")["cmdstat_evalsha"]
                    out[name][mode].append(float(stats["usec"]) / len(ids))
                    app.close()
    finally:
        raw.close()
        server.stop()
    return {n: {m: statistics.median(v) for m, v in modes.items()} for n, modes in out.items()}


def print_script_cost(cost: dict[str, dict[str, float]]) -> None:
    for mode in ("bulk", "single"):
        off = cost["off"][mode]
        shown = ", ".join(
            f"{name} {cost[name][mode]:.2f} us "
            f"({cost[name][mode] - off:+.2f}, x{cost[name][mode] / off:.2f})"
            for name in ("events", "events+group")
        )
        print(f"store script per image, {mode:>6}: result write alone {off:.2f} us; {shown}")


def compare_events(jobs: int, rounds: int, work: Path) -> None:
    """`--events`: the script's own cost (`script_cost`), then the three EVENT_RUNS end to end,
    alternating, and the medians' differences."""
    print_script_cost(script_cost(work, rounds=max(rounds, 3)))
    if not jobs:
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in EVENT_RUNS}
    names = list(EVENT_RUNS)
    for r in range(rounds):
        # Each round in another order, so that a machine growing busier favours none.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            env, group = EVENT_RUNS[name]
            runs[name].append(measure(jobs, work / f"{name}-{r}", env_extra=env, group=group))
    print(f"{jobs} images per run, stand-in model, one worker, {rounds} round(s)")
    for name, done in runs.items():
        for run in done:
            _print_run(name, run)
    for mode in MODES:
        base = {k: statistics.median(r[mode][k] for r in runs["off"]) for k in KEYS}
        for name in ("events", "events+group"):
            now = {k: statistics.median(r[mode][k] for r in runs[name]) for k in KEYS}
            stored = statistics.median(r[mode]["event_bytes"] for r in runs[name])
            grouped = statistics.median(r[mode]["group_bytes"] for r in runs[name])
            print(
                f"{mode:>6} {name:>12}: Redis CPU {base['redis_cpu_ms']:.4f} -> "
                f"{now['redis_cpu_ms']:.4f} ms/image "
                f"({(now['redis_cpu_ms'] - base['redis_cpu_ms']) * 1000:+.2f} us, "
                f"x{now['redis_cpu_ms'] / base['redis_cpu_ms']:.3f}); commands "
                f"{base['commands']:.2f} -> {now['commands']:.2f}; reads {base['reads']:.2f} -> "
                f"{now['reads']:.2f}; stream {stored:.0f} B/event, group {grouped:.0f} B/image"
            )


def checkout(ref: str, into: Path) -> Path:
    """The tree of `ref` (bench.overhead's), with this file copied in to measure it."""
    from bench.overhead import checkout as extract

    extract(ref, into)
    shutil.copy(Path(__file__), into / "bench" / "redis_cost.py")
    return into


def run_in(tree: Path, jobs: int) -> dict[str, Any]:
    """One measurement from `tree` (its producer and worker), in a child process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.redis_cost", "--json", "--jobs", str(jobs)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _print_run(name: str, run: dict[str, Any]) -> None:
    for mode, f in run.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(f["by_command"].items())[:6])
        print(
            f"{name:>8} {mode:>6}: Redis CPU {f['redis_cpu_ms']:.4f} ms/image, "
            f"{f['commands']:.2f} commands/image ({top}); {f.get('reads', 0):.2f} reads, "
            f"{f.get('net_bytes', 0):.0f} B in+out per image; queued {f['queued_bytes']:.0f} B, "
            f"result {f['result_bytes']:.0f} B, kept {f.get('kept_bytes', 0):.0f} B; "
            f"Client.wait +{f['wait_cpu_ms']:.4f} ms/image; "
            f"{f['failed']} failed"
        )
        if "broker_cpu_ms" in f:
            print(
                f"{'':>8} {mode:>6}: results apart (RESULT_URL): broker "
                f"{f['broker_cpu_ms']:.4f} ms/image, "
                f"result store {f['results_cpu_ms']:.4f} ms/image"
            )


KEYS = ("redis_cpu_ms", "commands", "reads", "queued_bytes", "result_bytes", "wait_cpu_ms")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.redis_cost", description=__doc__)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--baseline", default=None, help="a git ref to compare against")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one run, as JSON (used by --baseline)")
    p.add_argument(
        "--results-apart",
        action="store_true",
        help="results on a second redis-server (RESULT_URL): each server's CPU on its own",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (more clients: Redis then serves several requests per wakeup)",
    )
    p.add_argument(
        "--events",
        action="store_true",
        help="events off, on, and on with groups, alternating for --rounds rounds",
    )
    args = p.parse_args()
    if (args.results_apart or args.workers > 1 or args.events) and args.baseline:
        p.error("--results-apart, --workers and --events measure the current tree only")
    work = Path(tempfile.mkdtemp(prefix="imgqueue-redis-cost-"))
    try:
        if args.events:
            compare_events(args.jobs, args.rounds, work)
            return
        if args.json or args.results_apart or args.workers > 1:
            run = measure(args.jobs, work / "run", args.results_apart, args.workers)
            if args.json:
                print(json.dumps(run))
                return
            _print_run("current", run)
            return
        trees = {"current": ROOT}
        if args.baseline:
            trees = {"baseline": checkout(args.baseline, work / "baseline"), "current": ROOT}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_in(tree, args.jobs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.jobs} images per run, stand-in model, one worker, {args.rounds} round(s)")
    for name, done in runs.items():
        for run in done:
            _print_run(name, run)
    if args.baseline:
        for mode in MODES:
            for key in KEYS:
                was = statistics.median(r[mode][key] for r in runs["baseline"])
                now = statistics.median(r[mode][key] for r in runs["current"])
                ratio = now / was if was else float("nan")
                print(f"{mode:>6} {key:>13}: baseline {was:.4f}, current {now:.4f}, x{ratio:.3f}")


if __name__ == "__main__":
    main()
