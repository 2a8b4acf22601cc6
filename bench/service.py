"""The real service: a private redis-server, real `celery worker` processes, the producer API."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import redis

from producer import Client
from producer.client import parse_meta
from tests.support.paths import ROOT
from tests.support.redis_server import RedisServer
from tests.support.workers import WorkerProcess

POLL_S = 0.005
# Between idle-latency jobs: longer than BROKER_POLL_INTERVAL (0.5 s) and than OpenMP's spinning,
# so each job finds a worker really idle, as a lone job in production does. Back to back, a
# job found the CPUs still busy from the one before and hid what idling costs.
IDLE_S = 1.0


@dataclass(frozen=True)
class Run:
    """One batch of jobs: throughput from first submit to last result, per-job latencies."""

    jobs: int
    failed: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.jobs / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _done_at(meta: dict[str, object]) -> float:
    # The worker's own clock when it stored the result: no polling delay in the numbers.
    stamp = datetime.fromisoformat(str(meta["date_done"]))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


class Cluster:
    """Workers on one private Redis; every worker gets `base_env` plus its own overrides."""

    def __init__(self, workdir: Path, image_root: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir / "redis").start()
        self.image_root = image_root
        self.client = Client(self.redis.url(0))

    def env(self, **overrides: str) -> dict[str, str]:
        return self.env_for(ROOT, **overrides)

    def env_for(self, root: Path, **overrides: str) -> dict[str, str]:
        """A worker's environment, running from the source tree `root`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
        env.update(
            REDIS_URL=self.redis.url(0),
            MODEL_WEIGHTS="random:0",
            IMAGE_ROOT=str(self.image_root),
            # The repository first; keep what the caller had (e.g. packages carried to a host).
            PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
            # Repeated images would be answered from the result cache: measure the model path.
            RESULT_CACHE="false",
        )
        env.update(overrides)
        return env

    @contextmanager
    def workers(
        self, count: int, root: Path = ROOT, **overrides: str
    ) -> Iterator[list[WorkerProcess]]:
        """`root`: the source tree the workers run from (this one, or a baseline checkout)."""
        redis.Redis.from_url(self.redis.url(0)).flushdb()
        started = [
            WorkerProcess(
                self.env_for(root, **overrides), self.workdir / f"w{i}.log", f"bench{i}", root=root
            )
            for i in range(count)
        ]
        try:
            for worker in started:
                worker.wait_ready(timeout=180)
            yield started
        finally:
            for worker in started:
                worker.stop()

    def close(self) -> None:
        self.client.close()
        self.redis.stop()

    # -- load patterns -----------------------------------------------------------------------

    def burst(self, names: list[str], bulk_size: int = 1, model: str | None = None) -> Run:
        """Submit everything at once (one message per image, or `bulk_size` images per
        message); time from the first submit to the last stored result. `model`: the served
        name of the workers to send to (default: the default model's)."""
        submitted: dict[str, float] = {}
        first = time.time()
        for i in range(0, len(names), bulk_size):
            chunk = names[i : i + bulk_size]
            ids = self.client.submit_many(chunk, top_k=5, bulk_size=bulk_size, model=model)
            now = time.time()
            submitted.update((task_id, now) for task_id in ids)
        return self._collect(submitted, first)

    def closed_loop(self, names: list[str], window: int) -> Run:
        """Keep `window` jobs in flight: latency under a steady load, not a queue backlog."""
        pending = list(names)
        in_flight: dict[str, float] = {}
        submitted: dict[str, float] = {}
        finished: dict[str, float] = {}
        failed = 0
        first = time.time()
        while pending or in_flight:
            while pending and len(in_flight) < window:
                (task_id,) = self.client.submit_many([pending.pop()], top_k=5)
                in_flight[task_id] = submitted[task_id] = time.time()
            ids = list(in_flight)
            for task_id, raw in zip(ids, self.client.redis.mget(ids_keys(ids)), strict=True):
                outcome = parse_meta(task_id, raw)
                if outcome.done:
                    failed += not outcome.ok
                    finished[task_id] = _done_at(outcome.meta)
                    del in_flight[task_id]
            time.sleep(POLL_S)
        return _run(submitted, finished, failed, first)

    def idle_latency(
        self,
        name: str,
        repeats: int,
        model: str | None = None,
        settle: Callable[[], object] | None = None,
    ) -> Run:
        """One job at a time on an empty queue, each after the worker has idled for IDLE_S
        (and `settle` returned: e.g. bench.quiet.wait_quiet)."""
        runs = []
        for _ in range(repeats):
            if settle is not None:
                settle()
            time.sleep(IDLE_S)
            runs.append(self.burst([name], model=model))
        latencies = [lat for r in runs for lat in r.latencies]
        return Run(repeats, sum(r.failed for r in runs), sum(r.seconds for r in runs), latencies)

    def _collect(self, submitted: dict[str, float], first: float) -> Run:
        pending = list(submitted)
        finished: dict[str, float] = {}
        failed = 0
        deadline = time.monotonic() + 1800
        while pending and time.monotonic() < deadline:
            raws = self.client.redis.mget(ids_keys(pending))
            still = []
            for task_id, raw in zip(pending, raws, strict=True):
                outcome = parse_meta(task_id, raw)
                if outcome.done:
                    failed += not outcome.ok
                    finished[task_id] = _done_at(outcome.meta)
                else:
                    still.append(task_id)
            pending = still
            time.sleep(POLL_S if len(pending) < 8 else 0.05)
        if pending:
            raise TimeoutError(f"{len(pending)} benchmark jobs never finished")
        return _run(submitted, finished, failed, first)


def ids_keys(ids: list[str]) -> list[str]:
    from core.contract import result_key

    return [result_key(t) for t in ids]


def _run(submitted: dict[str, float], finished: dict[str, float], failed: int, first: float) -> Run:
    latencies = [finished[t] - submitted[t] for t in submitted]
    return Run(len(submitted), failed, max(finished.values()) - first, latencies)
