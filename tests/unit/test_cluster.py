"""Results on a Redis Cluster, the parts that need no cluster: RESULT_URL parsing and its
errors, password masking, the backend the worker picks, and a redelivered bulk on a store that
cannot say which images are done (tests/integration/test_cluster.py and
tests/system/test_cluster.py run a real cluster)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from core.connections import (
    RedisConfig,
    RedisConfigError,
    ResultStoreConfig,
)
from producer import Client
from worker import bulk, result_store
from worker.celery_app import create_app
from worker.errors import ConfigError
from worker.results_cluster import ClusterResultBackend
from worker.settings import Settings

# -- RESULT_URL: parsing and validation (no cluster needed) ----------------------------------


@pytest.mark.parametrize(
    ("url", "nodes"),
    [
        ("redis-cluster://10.0.0.1:7000", [("10.0.0.1", 7000)]),
        ("redis-cluster://a:7000,b:7001,c:7002/0", [("a", 7000), ("b", 7001), ("c", 7002)]),
        ("redis-cluster://u:p%40ss@a:7000,b/", [("a", 7000), ("b", 6379)]),
        ("rediss-cluster://a:7000,[::1]:7001?ssl_cert_reqs=required", [("a", 7000), ("::1", 7001)]),
    ],
)
def test_cluster_urls_parse(url: str, nodes: list[tuple[str, int]]) -> None:
    config = ResultStoreConfig.resolve(RedisConfig(), url)
    assert config.cluster and config.nodes() == nodes


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://a:1", "RESULT_URL must start with"),
        ("redis-cluster://a:7000,b:7001/1", "database 0 only"),
        ("redis-cluster://a:7000,,b:7001", "bad node ''"),
        ("redis-cluster://a:70000", "bad node 'a:70000'"),
        ("redis-cluster://a:port", "bad node 'a:port'"),
        ("redis-cluster://a:0", "port 0"),
        ("redis-cluster://u:p@a:1,u:p@b:2", "once, before the first host"),
        ("redis-cluster://a:1?ssl_ca_certs=/ca.pem", "ssl_* need rediss-cluster://"),
        ("rediss-cluster://a:1?bogus=1", "unknown option(s) bogus"),
        ("redis://a:1,b:2", "redis-cluster://host1:port,host2:port"),
        ("sentinel://s:26379/0", "RESULT_SENTINEL_MASTER"),
    ],
)
def test_malformed_result_urls_are_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(RedisConfigError, match=r"RESULT_|REDIS_") as caught:
        ResultStoreConfig.resolve(RedisConfig(), url)
    assert says in str(caught.value)


def test_result_url_defaults_to_the_broker_and_shares_its_prefix() -> None:
    broker = RedisConfig("sentinel://s:26379/0", "mymaster", "t1:")
    same = ResultStoreConfig.from_env({}, broker=broker)
    assert (same.url, same.sentinel_master, same.key_prefix) == (broker.url, "mymaster", "t1:")
    # A sentinel:// RESULT_URL takes REDIS_SENTINEL_MASTER unless RESULT_SENTINEL_MASTER says.
    other = ResultStoreConfig.from_env({"RESULT_URL": "sentinel://t:26379/1"}, broker=broker)
    assert other.sentinel_master == "mymaster"
    named = ResultStoreConfig.from_env(
        {"RESULT_URL": "sentinel://t:26379/1", "RESULT_SENTINEL_MASTER": "results"}, broker=broker
    )
    assert named.sentinel_master == "results"
    cluster = ResultStoreConfig.from_env({"RESULT_URL": "redis-cluster://a:1"}, broker=broker)
    assert cluster.key_prefix == "t1:" and cluster.result_key("x") == "t1:celery-task-meta-x"
    with pytest.raises(RedisConfigError, match="RESULT_SENTINEL_MASTER is set but RESULT_URL"):
        ResultStoreConfig.from_env({"RESULT_SENTINEL_MASTER": "x"}, broker=RedisConfig())
    with pytest.raises(RedisConfigError, match="cluster fails over by itself"):
        ResultStoreConfig.from_env(
            {"RESULT_URL": "redis-cluster://a:1", "RESULT_SENTINEL_MASTER": "x"}, broker=broker
        )
    with pytest.raises(RedisConfigError, match="hash tag"):
        ResultStoreConfig.resolve(RedisConfig(key_prefix="{tenant}:"), "redis-cluster://a:1")


def test_the_producer_reads_result_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULT_URL", "redis-cluster://127.0.0.1:1,127.0.0.1:2")
    monkeypatch.setenv("REDIS_KEY_PREFIX", "t1:")
    client = Client("redis://127.0.0.1:1/0")  # connects to nothing yet
    try:
        assert client.result_config.cluster and client.result_config.key_prefix == "t1:"
        assert client.result_config.nodes() == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    finally:
        client.close()
    with Client("redis://127.0.0.1:1/0", result_url="") as same:  # empty: the broker
        assert same.results is same.redis


def test_passwords_are_masked() -> None:
    config = ResultStoreConfig.resolve(RedisConfig(), "redis-cluster://u:s3cret@a:1,b:2/0")
    assert config.safe_url() == "redis-cluster://u:***@a:1,b:2/0"
    with pytest.raises(RedisConfigError) as caught:
        ResultStoreConfig.resolve(RedisConfig(), "redis-cluster://u:s3cret@a:1,b:2/5")
    assert "s3cret" not in str(caught.value)


def test_worker_settings_pick_the_backend_by_result_url() -> None:
    plain = Settings.from_env({})
    assert result_store.backend(plain)[0] == "worker.backend:ResultBackend+redis://localhost:6379/0"
    assert plain.effective_result_wait_replicas == 0
    env = {"RESULT_URL": "redis-cluster://a:7000,b:7001", "REDIS_KEY_PREFIX": "t1:"}
    settings = Settings.from_env(env)
    spec, options = result_store.backend(settings)
    assert spec == "worker.results_cluster:ClusterResultBackend+redis-cluster://a:7000,b:7001"
    assert options["wait_replicas"] == 1 and options["wait_timeout_ms"] == 1000
    assert options["global_keyprefix"] == "t1:"
    off = Settings.from_env({**env, "RESULT_WAIT_REPLICAS": "0"})
    assert off.effective_result_wait_replicas == 0
    sentinel = Settings.from_env(
        {"RESULT_URL": "sentinel://s:26379/0", "REDIS_SENTINEL_MASTER": "m"}
        | {"REDIS_URL": "sentinel://s:26379/0"}
    )
    assert result_store.backend(sentinel)[0].startswith("worker.backend:SentinelResultBackend+")
    for bad, says in (
        ({"RESULT_URL": "redis-cluster://a:1/3"}, "database 0 only"),
        ({"RESULT_WAIT_REPLICAS": "1"}, "applies to a Redis Cluster"),
        ({**env, "RESULT_WAIT_REPLICAS": "-1"}, "RESULT_WAIT_REPLICAS must be within"),
        ({**env, "RESULT_WAIT_TIMEOUT_MS": "0"}, "RESULT_WAIT_TIMEOUT_MS must be within"),
        ({"RESULT_WAIT_REPLICAS": "one"}, "RESULT_WAIT_REPLICAS='one' is invalid"),
    ):
        with pytest.raises(ConfigError, match=says):
            Settings.from_env(bad)
    # The app builds its backend without connecting (the client is made on first use).
    app = create_app(settings)
    try:
        backend = app.backend
        assert isinstance(backend, ClusterResultBackend)
        assert backend.get_key_for_task("x") == b"t1:celery-task-meta-x"
        assert (backend.wait_replicas, backend.wait_timeout_ms) == (1, 1000)
        # Nothing is published on a cluster: waiting by pub/sub says so instead of hanging.
        with pytest.raises(NotImplementedError, match="read by key"):
            app.AsyncResult("x").get(timeout=1)
    finally:
        app.close()


def test_a_redelivered_bulk_runs_every_image_when_the_store_cannot_say_which_are_done() -> None:
    class Away:
        def mget(self, keys: list[str]) -> list[Any]:
            raise redis.ConnectionError("the master is failing over")

    images = [bulk.Image(f"i{n}", "cat.jpg", 5) for n in range(3)]
    assert bulk.finished_ids(Away(), images) == set()  # not a failed bulk message
