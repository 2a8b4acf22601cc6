"""`imgqueue status`: queues, workers, dead letters and the last minute's throughput.

Queues come from Redis (producer.queues: every priority list, in-flight claims, dead letters).
Workers are asked over Celery's broadcast: `ping`, and `imgqueue_info` for their model,
device, precision, readiness and the jobs they finished in the last minute. It needs read
access to the delivery layer's keys and to publish: the `admin` user of deploy/redis.conf.
"""

from __future__ import annotations

from typing import Any

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
    return out


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
    return "\n".join(lines)
