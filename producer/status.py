"""`imgqueue status`: queues, workers, dead letters and the last minute's throughput.

Queues come from Redis (producer.queues: every priority list, in-flight claims, dead letters).
Workers are asked over Celery's broadcast: `ping`, and `imgqueue_info` for their model,
device, precision, readiness and the jobs they finished in the last minute. It needs read
access to the delivery layer's keys and to publish: the `admin` user of deploy/redis.conf.

Redis' memory comes from `INFO memory`, with an estimate of the hours of results it still has
room for: (maxmemory - used_memory) / (results per hour x bytes per result). Results per hour
are the workers' jobs of the last minute x 60 (every image of a bulk message stores its own
result); bytes per result the mean `MEMORY USAGE` of up to 20 result keys RANDOMKEY returns
(never a keyspace scan), or 1,300 bytes (a top-5 result) when it finds none. Expiry is left
out (RESULT_EXPIRES frees results as new ones come): the estimate is the pessimistic one.
Where RESULT_URL puts results apart (a Redis Cluster, say), the estimate is the result
store's, per master (producer.store_memory), and the broker's line shows its memory only.
"""

from __future__ import annotations

from typing import Any

from producer import memory, store_memory
from producer.client import Client
from producer.queues import snapshot


def gather(client: Client, queues: list[str], timeout: float = 1.5) -> dict[str, Any]:
    """Everything `imgqueue status` prints, as one JSON-ready dict."""
    snap = snapshot(client.redis, client.config, queues)
    control = client.celery.control
    workers: dict[str, dict[str, Any]] = {}
    for reply in control.broadcast("imgqueue_info", reply=True, timeout=timeout) or []:
        for name, info in reply.items():
            workers[name] = dict(info) if isinstance(info, dict) else {"error": str(info)}
    for reply in control.ping(timeout=timeout) or []:
        for name in reply:
            workers.setdefault(name, {"ready": None, "note": "answered ping only"})
    jobs = sum(int(w.get("jobs_last_minute") or 0) for w in workers.values())
    out = snap.to_dict()
    out["workers"] = dict(sorted(workers.items()))
    out["jobs_last_minute"] = jobs
    if store_memory.apart(client.result_config, client.config):  # RESULT_URL elsewhere
        out["result_store"] = store_memory.summary(client, jobs * 60.0)
    elif snap.memory is not None:
        size, measured = memory.result_bytes(client.redis, client.config)
        hours = memory.hours_left(snap.memory, jobs * 60.0, size)
        out["memory"].update(
            result_bytes=size,
            result_bytes_measured=measured,
            results_per_hour=jobs * 60,
            hours_left=None if hours is None else round(hours, 2),
        )
    return out


def render_memory(mem: dict[str, Any] | None) -> str:
    """One line: how full Redis is, and how many hours of results it has room for."""
    if mem is None:
        return "redis memory: unknown (this Redis user may not run INFO)"
    used, limit = mem["used_memory"], mem["maxmemory"]
    policy = mem["maxmemory_policy"]
    if not limit:
        return f"redis memory: {memory.format_bytes(used)} used, no maxmemory ({policy})"
    line = (
        f"redis memory: {memory.format_bytes(used)} used of maxmemory "
        f"{memory.format_bytes(limit)} ({used / limit:.0%}, {policy})"
    )
    size = mem.get("result_bytes")
    if size is None:
        return line
    how = (
        f"mean of {mem['result_bytes_measured']} measured"
        if mem.get("result_bytes_measured")
        else "assumed"
    )
    rate = mem["results_per_hour"]
    if mem.get("hours_left") is None:
        return f"{line}\n  no results written in the last minute: no estimate of the room left"
    return (
        f"{line}\n  room for about {mem['hours_left']:.1f} hours of results at {rate / 3600:.1f}"
        f"/s, {memory.format_bytes(size)} each ({how}; expiry not counted)"
    )


def render(status: dict[str, Any]) -> str:
    """The human form."""
    lines = [f"{'queue':<16}{'depth':>8}{'in flight':>11}  by priority (0 highest)"]
    for name, q in status["queues"].items():
        pri = " ".join(f"{p}:{n}" for p, n in q["by_priority"].items())
        lines.append(f"{name:<16}{q['depth']:>8}{q['in_flight']:>11}  {pri}")
    workers = status["workers"]
    lines.append(f"\nworkers: {len(workers)} answered")
    for name, w in workers.items():
        if "model" not in w:
            lines.append(f"  {name}  {w.get('note') or w.get('error')}")
            continue
        state = "ready" if w.get("ready") else "NOT READY"
        lines.append(
            f"  {name}  {state}  {w['model']} {w['weights']} {w['device']} {w['precision']}"
            f"  pid {w['pid']}  {w['jobs_last_minute']} jobs in the last minute"
        )
    lines.append(
        f"\nconsumers: {status['consumers']} live, {status['stale_consumers']} silent "
        f"(their messages go back at the next sweep)"
    )
    lines.append(f"dead letters: {status['dead_letters']} (imgqueue dead-letters list)")
    jobs = status["jobs_last_minute"]
    lines.append(f"throughput: {jobs} jobs in the last minute ({jobs / 60:.1f}/s)")
    lines.append(render_memory(status.get("memory")))
    if status.get("result_store"):
        lines.append(store_memory.render(status["result_store"]))
    return "\n".join(lines)
