"""Results on a Redis Cluster (RESULT_URL=redis-cluster://...) from real workers: queues on one
Redis, results spread over the cluster's masters and read back, durable across a master's
SIGKILL under load (tests/integration/test_cluster.py: the backend's guarantees, no worker).

The cluster is real: six `redis-server --cluster-enabled yes` on loopback (three masters, a
replica each), made one by `redis-cli --cluster create` (tests/support/redis_cluster.py)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.main import main as cli
from core.connections import (
    is_cluster_client,
)
from core.contract import result_key
from producer import Client
from tests.support.cluster_results import (
    broker_fixture,  # noqa: F401  (the fixture `broker`)
    by_master,
    cluster_fixture,  # noqa: F401  (the fixture `cluster`)
)
from tests.support.paths import ROOT
from tests.support.redis_cluster import RedisClusterNodes
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory

SOURCES = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]


def cluster_env(
    broker: RedisServer, cluster: RedisClusterNodes, image_root: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "PYTEST"))}
    env.update(
        REDIS_URL=broker.url(),
        RESULT_URL=cluster.url(),
        MODEL="sleep:0ms",
        MODEL_WEIGHTS="random:0",
        IMAGE_ROOT=str(image_root),
        DEVICE="cpu",
        PYTHONPATH=str(ROOT),
        DEAD_WORKER_TIMEOUT="5",
    )
    return env


@pytest.fixture(scope="module")
def cluster_workers(
    broker: RedisServer,
    cluster: RedisClusterNodes,
    image_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(
        cluster_env(broker, cluster, image_root), tmp_path_factory.mktemp("cluster-logs")
    )
    yield factory
    factory.stop_all()


def result_keys_on_the_broker(broker: RedisServer) -> list[Any]:
    """Keys of the result store (results, delivery counters, cache) found on the broker."""
    with redis.Redis.from_url(broker.url()) as client:
        return [
            key
            for pattern in ("*celery-task-meta-*", "*imgqueue-deliveries-*", "*result-cache*")
            for key in client.scan_iter(pattern)
        ]


def test_results_spread_over_every_master_and_read_back(
    cluster: RedisClusterNodes, broker: RedisServer, cluster_workers: WorkerFactory
) -> None:
    cluster_workers.start()
    with Client(broker.url(), result_url=cluster.url()) as client:
        assert is_cluster_client(client.results) and not is_cluster_client(client.redis)
        bulk = client.submit_many(SOURCES * 40, top_k=2)  # 160 images, 64 a message
        single = client.submit_many(SOURCES * 6, top_k=2, bulk_size=1)
        ids = bulk + single
        outcomes = list(client.wait(ids, timeout=120))
        assert {o.task_id for o in outcomes} == set(ids)
        assert {o.state for o in outcomes} == {"SUCCESS"}
        assert client.result(single[0], timeout=10)["source"] == SOURCES[0]
    # Every master holds a share of the results; the broker holds none.
    spread = by_master(cluster, [result_key(i) for i in ids])
    assert sum(spread.values()) == len(ids) and all(n > 0 for n in spread.values()), spread
    assert result_keys_on_the_broker(broker) == []
    # The CLI reads them from the cluster too, with --result-url or RESULT_URL.
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli(["--redis-url", broker.url(), "--result-url", cluster.url(), "result", *ids[:5]])
    assert code == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["id"], r["state"]) for r in lines] == [(i, "SUCCESS") for i in ids[:5]]


@pytest.mark.slow
def test_a_master_sigkilled_under_load_loses_no_job_and_no_result(
    cluster: RedisClusterNodes, broker: RedisServer, cluster_workers: WorkerFactory
) -> None:
    worker = cluster_workers.workers[0] if cluster_workers.workers else cluster_workers.start()
    with Client(broker.url(), result_url=cluster.url()) as client:
        ids = client.submit_many(SOURCES * 200, top_k=1)  # 800 images in 13 messages
        ids += client.submit_many(SOURCES * 16, top_k=1, bulk_size=1)  # and 64 single jobs

        def finished() -> list[str]:
            return [o.task_id for o in client._fetch(ids) if o.done]

        wait_for(lambda: len(finished()) >= 64, 60, "the first results")
        before = finished()
        victim = cluster.master_ports()[0]
        replica = cluster.kill_master(victim)
        killed_at = time.monotonic()
        assert len(before) < len(ids) - 300, "the kill must come while most jobs are in flight"
        took = cluster.wait_failover(replica, timeout=60)

        outcomes = list(client.wait(ids, timeout=180, reconnect_timeout=120))
        assert {o.task_id for o in outcomes} == set(ids)
        assert {o.state for o in outcomes} == {"SUCCESS"}
        # Every result stored before the kill is still there (the replica had it: WAIT).
        after = {o.task_id: o.state for o in client._fetch(before)}
        assert set(after.values()) == {"SUCCESS"}
        print(
            f"{len(before)} of {len(ids)} done when master {victim} was SIGKILLed; replica "
            f"{replica} promoted in {took:.1f}s; all done {time.monotonic() - killed_at:.1f}s "
            "after the kill"
        )
    assert worker.alive()
    # The old master, back, is a replica of the node that took over, which serves its slots.
    cluster.restart(victim)
    assert cluster.replica_of(replica) == victim
    spread = by_master(cluster, [result_key(i) for i in ids])
    assert sum(spread.values()) == len(ids) and replica in spread
