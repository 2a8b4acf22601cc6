"""Which result backend a worker uses, from RESULT_URL (default: REDIS_URL).

- `redis://`, `rediss://`, `unix://`: worker.backend.ResultBackend;
- `sentinel://` (RESULT_SENTINEL_MASTER): worker.backend.SentinelResultBackend;
- `redis-cluster://`, `rediss-cluster://`: worker.results_cluster.ClusterResultBackend, which
  waits for RESULT_WAIT_REPLICAS replicas (default 1) to have each final state.

Imports no Celery backend: create_app names the class, Celery loads it.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from worker.settings import Settings

# What any call to the result store may raise: a Redis error, or a cluster client's own (no
# node reachable to learn the slots from, a slot no master covers during a failover).
ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def backend(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's `result_backend` (`module:Class+url`) and `result_backend_transport_options`."""
    store = settings.result_config
    options = store.backend_transport_options()
    if store.cluster:
        name = "worker.results_cluster:ClusterResultBackend"
        options.update(
            wait_replicas=settings.effective_result_wait_replicas,
            wait_timeout_ms=settings.result_wait_timeout_ms,
            # A half-open connection fails the store (then retried), never hangs it; a dead
            # host's node is given up on quickly (it is tried again on every slot refresh).
            socket_timeout=10.0,
            socket_connect_timeout=2.0,
        )
    elif store.sentinel:
        name = "worker.backend:SentinelResultBackend"
    else:
        name = "worker.backend:ResultBackend"
    return f"{name}+{store.url}", options
