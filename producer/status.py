"""`imgqueue status`: models, queues, workers, dead letters and the last minute's throughput.

Models are the registered ones (core.models: every model some worker served, until
`imgqueue model forget`) together with those the answering workers serve: for each, its
queue's depth and in-flight count, its workers (ready or not) and the versions they run.

Queues come from Redis (producer.queues: every priority list, in-flight claims, dead letters).
Workers are asked over Celery's broadcast, `imgqueue_info`, for their model, device,
precision, readiness and the jobs they finished in the last minute; the answers are awaited
until every worker with a fresh heartbeat has answered, else `--timeout` past the last one
(`ask_workers`). It needs read access to the delivery layer's keys and to publish: the `admin`
user of deploy/redis.conf.

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

from collections.abc import Callable
from typing import Any

import redis

from core import memory, models, webhooks
from core.settings import DeliverySettings
from producer import store_memory
from producer.client import Client
from producer.queues import live_workers, snapshot


def gather(
    client: Client,
    queues: list[str],
    timeout: float = 1.5,
    dead_after: float = DeliverySettings.dead_worker_timeout,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Everything `imgqueue status` prints, as one JSON-ready dict. `say` is told, in a line,
    what the workers' answers are waited for when that is more than a round trip."""
    try:
        registered = models.registered(client.redis, client.config)
    except redis.exceptions.NoPermissionError:
        registered = {}
    workers = ask_workers(client, timeout, dead_after, say)
    # The queues named, every registered model's and every answering worker's model's.
    model_queues = [m["queue"] for m in registered.values()]
    model_queues += [str(w["queue"]) for w in workers.values() if w.get("queue")]
    named = list(dict.fromkeys(queues + model_queues))
    snap = snapshot(client.redis, client.config, named, dead_after)
    jobs = sum(int(w.get("jobs_last_minute") or 0) for w in workers.values())
    out = snap.to_dict()
    out["workers"] = dict(sorted(workers.items()))
    out["models"] = per_model(registered, out["workers"], out["queues"])
    out["jobs_last_minute"] = jobs
    # Deliveries retrying and dead-lettered, on the result store (core.webhooks).
    out["webhooks"] = webhooks.summary(client.results, client.config.key_prefix)
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


def ask_workers(
    client: Client,
    timeout: float,
    dead_after: float = DeliverySettings.dead_worker_timeout,
    say: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each answering worker's `imgqueue_info`, by node name.

    A broadcast waits until `timeout` seconds pass without a reply, so without a count it
    always waits that long after the last one: it stops instead once as many workers answered
    as have a fresh heartbeat (queues.live_workers), one round trip on a healthy cluster. One
    that was never heard of (no heartbeat yet) can be missed then; with none known, or one
    silent, the wait runs its course. A worker answers a command it does not know with an
    error, so a `ping` would add nothing.
    """
    try:
        live = live_workers(client.redis, client.config, dead_after)
    except redis.exceptions.NoPermissionError:
        live = []
    if say is not None and not live:
        say(f"no worker has a fresh heartbeat: waiting {timeout:g}s for any to answer")
    control = client.celery.control
    replies = control.broadcast(
        "imgqueue_info", reply=True, timeout=timeout, limit=len(live) or None
    )
    workers: dict[str, dict[str, Any]] = {}
    for reply in replies or []:
        for name, info in reply.items():
            workers[name] = dict(info) if isinstance(info, dict) else {"error": str(info)}
    if say is not None and live and len(workers) < len(live):
        say(
            f"{len(workers)} of the {len(live)} workers with a fresh heartbeat answered within "
            f"{timeout:g}s: a silent one is busy, stuck or just stopped"
        )
    return workers


def per_model(
    registered: dict[str, dict[str, Any]],
    workers: dict[str, dict[str, Any]],
    queues: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One entry per model, registered or served by an answering worker ("" first)."""
    serving: dict[str, list[str]] = {}
    for node, info in workers.items():
        if "model" in info:  # workers before the registry reply without "name": the default
            serving.setdefault(str(info.get("name") or ""), []).append(node)
    out = []
    for name in sorted(set(registered) | set(serving)):
        entry = registered.get(name, {})
        nodes = serving.get(name, [])
        infos = [workers[n] for n in nodes]
        queue = entry.get("queue") or next(
            (str(i["queue"]) for i in infos if i.get("queue")), models.queue_for(name)
        )
        q = queues.get(queue, {})
        versions = {str(i.get("version")) for i in infos if i.get("version") is not None}
        if not infos and entry.get("version") is not None:
            versions.add(str(entry["version"]))
        out.append(
            {
                "name": name,
                "model": entry.get("model") or next((i.get("model") for i in infos), None),
                "arch": entry.get("arch") or next((i.get("arch") for i in infos), None),
                "queue": queue,
                "depth": q.get("depth", 0),
                "in_flight": q.get("in_flight", 0),
                "workers": nodes,
                "ready_workers": sum(1 for i in infos if i.get("ready")),
                "versions": sorted(versions),
                "registered": name in registered,
                "registered_version": entry.get("version"),
                "registered_weights": entry.get("weights"),
                "registered_labels": entry.get("labels"),
                "seen": entry.get("seen"),
            }
        )
    return out


def render_models(rows: list[dict[str, Any]]) -> list[str]:
    """The human form of the `models` list."""
    if not rows:
        return ["models: none registered, no worker named one"]
    nw = max([16, *(len(models.shown(m["name"])) + 2 for m in rows)])
    qw = max([20, *(len(m["queue"]) + 2 for m in rows)])
    lines = [f"{'model':<{nw}}{'queue':<{qw}}{'depth':>8}{'in flight':>11}  workers  version(s)"]
    for m in rows:
        ready, count = m["ready_workers"], len(m["workers"])
        who = f"{ready}/{count} ready" if count else "NO WORKER"
        versions = ", ".join(m["versions"]) or "-"
        note = "" if m["registered"] else "  (not registered)"
        lines.append(
            f"{models.shown(m['name']):<{nw}}{m['queue']:<{qw}}{m['depth']:>8}{m['in_flight']:>11}"
            f"  {who}  {versions}{note}"
        )
    return lines


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
    width = max([16, *(len(name) + 2 for name in status["queues"])])
    lines = [f"{'queue':<{width}}{'depth':>8}{'in flight':>11}  by priority (0 highest)"]
    for name, q in status["queues"].items():
        pri = " ".join(f"{p}:{n}" for p, n in q["by_priority"].items())
        lines.append(f"{name:<{width}}{q['depth']:>8}{q['in_flight']:>11}  {pri}")
    lines.append("")
    lines.extend(render_models(status.get("models", [])))
    workers = status["workers"]
    lines.append(f"\nworkers: {len(workers)} answered")
    for name, w in workers.items():
        if "model" not in w:
            lines.append(f"  {name}  {w.get('note') or w.get('error')}")
            continue
        state = "ready" if w.get("ready") else "NOT READY"
        model = str(w.get("name") or w["model"])
        if w.get("arch") and w["arch"] != model:
            model += f" ({w['arch']})"
        if w.get("version") is not None:
            model += f" v{w['version']}"
        lines.append(
            f"  {name}  {state}  {model} {w['weights']} {w['device']} {w['precision']}"
            f"  pid {w['pid']}  {w['jobs_last_minute']} jobs in the last minute"
        )
    lines.append(
        f"\nconsumers: {status['consumers']} live, {status['stale_consumers']} silent "
        f"(their messages go back at the next sweep)"
    )
    lines.append(f"dead letters: {status['dead_letters']} (imgqueue dead-letters list)")
    if "webhooks" in status:
        lines.extend(webhooks.render(status["webhooks"]))
    jobs = status["jobs_last_minute"]
    lines.append(f"throughput: {jobs} jobs in the last minute ({jobs / 60:.1f}/s)")
    lines.append(render_memory(status.get("memory")))
    if status.get("result_store"):
        lines.append(store_memory.render(status["result_store"]))
    return "\n".join(lines)
