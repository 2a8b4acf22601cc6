"""The result store's memory, per master, where RESULT_URL puts results apart from the broker.

On a Redis Cluster each result key lives on the master owning its slot, so results spread
evenly over the masters, and the first master to reach its maxmemory refuses results first:
the hours of results left are the least over the masters of (its room) / (its share of the
results per hour x bytes per result). `imgqueue status` shows it; the exporter exports each
master's `used_memory` and `maxmemory`. Importing this never imports Celery or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from core import memory
from core.connections import RedisConfig, ResultStoreConfig, is_cluster_client
from core.errors import ProducerError


@dataclass(frozen=True)
class NodeMemory:
    """One master of the result store: `memory` is None where this user may not run INFO."""

    node: str
    memory: memory.MemoryInfo | None


def masters(client: Any) -> list[tuple[str, Any]]:
    """(host:port, a plain client of it) for each master of the store (one unless a cluster)."""
    if is_cluster_client(client):
        return [(n.name, client.get_redis_connection(n)) for n in client.get_primaries()]
    kwargs = client.connection_pool.connection_kwargs
    name = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return [(str(name), client)]


def read(client: Any) -> list[NodeMemory]:
    """INFO memory of every master. Connection errors propagate."""
    return [NodeMemory(name, memory.read_memory(node)) for name, node in masters(client)]


def hours_left(
    nodes: list[NodeMemory], results_per_hour: float, bytes_per_result: int
) -> float | None:
    """Hours until the first master reaches its maxmemory, results spread evenly over them;
    None when no master has a maxmemory or no results are written."""
    share = results_per_hour / max(len(nodes), 1)
    hours = [
        memory.hours_left(n.memory, share, bytes_per_result) for n in nodes if n.memory is not None
    ]
    known = [h for h in hours if h is not None]
    return min(known) if known else None


def apart(config: ResultStoreConfig, broker: RedisConfig) -> bool:
    """Whether RESULT_URL puts results somewhere other than the broker."""
    return (config.url, config.sentinel_master) != (broker.url, broker.sentinel_master)


def summary(producer: Any, results_per_hour: float) -> dict[str, Any]:
    """What `imgqueue status` shows of a producer.Client's result store, JSON-ready; `error`
    when it cannot be reached."""
    config: ResultStoreConfig = producer.result_config
    out: dict[str, Any] = {"url": config.safe_url(), "cluster": config.cluster}
    keys = RedisConfig(key_prefix=config.key_prefix)  # result keys: only the prefix counts
    try:
        client = producer.results
        nodes = read(client)
        sizes = [memory.result_bytes(node, keys) for _, node in masters(client)]
    except (ProducerError, redis.RedisError, RedisClusterException, OSError) as exc:
        out["error"] = str(exc)
        return out
    measured = sum(n for _, n in sizes)
    size = (
        round(sum(s * n for s, n in sizes) / measured) if measured else memory.RESULT_BYTES_FALLBACK
    )
    hours = hours_left(nodes, results_per_hour, size)
    out.update(
        masters=[
            {"node": n.node, **(n.memory.to_dict() if n.memory else {"used_memory": None})}
            for n in nodes
        ],
        result_bytes=size,
        result_bytes_measured=measured,
        results_per_hour=results_per_hour,
        hours_left=None if hours is None else round(hours, 2),
    )
    return out


def render(store: dict[str, Any]) -> str:
    """The human lines of `summary`."""
    kind = "Redis Cluster" if store["cluster"] else "Redis"
    head = f"results: {kind} {store['url']}"
    if "error" in store:
        return f"{head}\n  cannot be reached: {store['error']}"
    lines = [f"{head}, {len(store['masters'])} master(s)"]
    for node in store["masters"]:
        used, limit = node.get("used_memory"), node.get("maxmemory")
        if used is None:
            lines.append(f"  {node['node']}: memory unknown (this user may not run INFO)")
        elif not limit:
            lines.append(f"  {node['node']}: {memory.format_bytes(used)} used, no maxmemory")
        else:
            lines.append(
                f"  {node['node']}: {memory.format_bytes(used)} used of maxmemory "
                f"{memory.format_bytes(limit)} ({used / limit:.0%}, {node['maxmemory_policy']})"
            )
    if store.get("hours_left") is not None:
        lines.append(
            f"  room for about {store['hours_left']:.1f} hours of results at "
            f"{store['results_per_hour'] / 3600:.1f}/s on the fullest master, "
            f"{memory.format_bytes(store['result_bytes'])} each (expiry not counted)"
        )
    return "\n".join(lines)
