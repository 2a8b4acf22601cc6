"""`python -m bench.result_wait [--rounds R] [--stores N]`: what storing results costs on a
Redis Cluster, with and without `WAIT 1` (RESULT_WAIT_REPLICAS), against one Redis.

Starts a private six-node cluster (three masters, a replica each) and one redis-server on
loopback, then times the result backend's own store calls from one process, in rounds that
alternate the settings: a single job's final state (`store_result`, as `classify` stores
SUCCESS) and a bulk message's 64 final states (`store_many`). Prints the median per call and
per image, what WAIT adds, and what the events' outbox adds (worker/outbox.py: the intents
written before the results, so a worker killed in between loses no event).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, states

from worker.results_cluster import ClusterResultBackend

RESULT = {"source": "cat.jpg", "predictions": [{"index": 281, "label": "tabby", "p": 0.6}] * 5}
BULK = 64


class NoOutbox(ClusterResultBackend):
    """The cluster's store without the outbox's intents (as before it), to measure them."""

    def _intend(self, notes: Any) -> None:
        return None


def _backend(spec: str, wait: int) -> Any:
    app = Celery("bench-result-wait", backend=spec, set_as_current=False)
    app.conf.update(result_expires=600, result_backend_transport_options={"wait_replicas": wait})
    return app.backend


def _time(backend: Any, stores: int) -> tuple[float, float]:
    """(seconds per single store, seconds per bulk store of BULK)."""
    started = time.perf_counter()
    for _ in range(stores):
        backend.store_result(str(uuid.uuid4()), RESULT, states.SUCCESS)
    single = (time.perf_counter() - started) / stores
    bulks = max(stores // 8, 1)
    started = time.perf_counter()
    for _ in range(bulks):
        backend.store_many([(str(uuid.uuid4()), RESULT, states.SUCCESS) for _ in range(BULK)])
    return single, (time.perf_counter() - started) / bulks


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.result_wait", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", type=int, default=400, help="single stores per round")
    ns = parser.parse_args()
    from tests.support.redis_cluster import RedisClusterNodes
    from tests.support.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisClusterNodes(Path(tmp) / "cluster").start()
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            setups = {
                "one Redis (ResultBackend)": _backend(
                    f"worker.backend:ResultBackend+{server.url()}", 0
                ),
                "cluster, RESULT_WAIT_REPLICAS=0": _backend(
                    f"worker.results_cluster:ClusterResultBackend+{cluster.url()}", 0
                ),
                "cluster, RESULT_WAIT_REPLICAS=1": _backend(
                    f"worker.results_cluster:ClusterResultBackend+{cluster.url()}", 1
                ),
                "cluster, WAIT 1, no outbox": _backend(
                    f"bench.result_wait:NoOutbox+{cluster.url()}", 1
                ),
            }
            for backend in setups.values():
                _time(backend, 50)  # warm: connections, scripts, slots
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
            for _ in range(ns.rounds):
                for name, backend in setups.items():
                    runs[name].append(_time(backend, ns.stores))
        finally:
            server.stop()
            cluster.stop()
    print(f"median of {ns.rounds} rounds, one process, loopback")
    print(f"{'setup':<34}{'single store':>14}{f'bulk of {BULK}':>14}{'per image':>12}")
    medians = {}
    for name, figures in runs.items():
        single = statistics.median(f[0] for f in figures) * 1000
        bulk = statistics.median(f[1] for f in figures) * 1000
        medians[name] = (single, bulk)
        print(f"{name:<34}{single:>11.3f} ms{bulk:>11.3f} ms{bulk / BULK:>9.3f} ms")
    off, on = medians["cluster, RESULT_WAIT_REPLICAS=0"], medians["cluster, RESULT_WAIT_REPLICAS=1"]
    print(
        f"WAIT 1 adds {on[0] - off[0]:.3f} ms per single store and {on[1] - off[1]:.3f} ms per "
        f"bulk store ({(on[1] - off[1]) / BULK * 1000:.1f} us per image)"
    )
    bare = medians["cluster, WAIT 1, no outbox"]
    print(
        f"the outbox adds {on[0] - bare[0]:.3f} ms per single store and {on[1] - bare[1]:.3f} ms "
        f"per bulk store ({(on[1] - bare[1]) / BULK * 1000:.1f} us per image)"
    )


if __name__ == "__main__":
    main()
