"""Results on a real Redis Cluster (tests/support/redis_cluster.py): the cluster for the results
and the queues' own Redis apart from it, and how many of some keys each master holds.

The module-scoped fixtures `cluster` and `broker` are defined here under those names; a test
module imports `cluster_fixture` and `broker_fixture` (never called directly) to use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.redis_cluster import RedisClusterNodes
from tests.support.redis_server import RedisServer


@pytest.fixture(name="cluster", scope="module")
def cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(name="broker", scope="module")
def broker_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The queues' own Redis: one primary, apart from the cluster."""
    server = RedisServer(tmp_path_factory.mktemp("cluster-broker")).start()
    yield server
    server.stop()


def by_master(cluster: RedisClusterNodes, keys: list[str]) -> dict[int, int]:
    """How many of `keys` each live master holds (asked of each master directly)."""
    out = {}
    for port in cluster.master_ports():
        with redis.Redis(port=port) as node, node.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            # A key of another master's slot answers MOVED: not here.
            replies = pipe.execute(raise_on_error=False)
            out[port] = sum(1 for x in replies if not isinstance(x, Exception) and x)
    return out
