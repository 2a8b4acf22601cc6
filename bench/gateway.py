"""`python -m bench.gateway [--singles N] [--lists M] [--rounds R] [--connections 4,16]`: the
HTTP gateway against the Python client, in one run.

Starts a private redis-server (or uses REDIS_URL, under a key prefix of its own), one real
gateway process (`imgqueue serve` on a free loopback port, its defaults: uvicorn, one process,
access log on) and an API key for a tenant of its own. The load comes from this process: a
small asyncio HTTP/1.1 client with keep-alive connections and each request's bytes made once,
so it costs the CPUs little beside the gateway. Measured, in this order:

1. submit throughput, one source per request (POST /v1/jobs `{"source": ...}`, N connections
   kept busy, for each N of --connections) against `Client.submit(source, tenant=...)` in a
   loop in this process, and lists of 64 (`{"sources": [...64]}`) against
   `Client.submit_many(64 sources, tenant=...)`, rounds alternating client and gateway; the
   jobs go to a queue no worker consumes, emptied after every timing. Prints the medians, each
   ratio gateway / client (aims: 0.5 and 0.8), and what the gateway process, redis-server and
   this process (the Client's own work, or the load generator's) spent in CPU per request.
2. GET /v1/jobs/{id} of finished jobs (their results stored as a worker stores them, with the
   worker's own result backend) at a fixed 200 requests/s for `--get-seconds`, each request
   sent on time whatever the others do (open loop): p50 and p99 of the time from when a request
   was due to its whole answer (aim p99 <= 10 ms).
3. SSE delivery delay, if the gateway has GET /v1/events: one stream open, then jobs' final
   states stored one at a time (the worker's backend writes the completion event in the same
   script), each timed from just before its store to the moment its event reaches the stream's
   reader: p50, p99, max. Skipped, with a message, where the endpoint is absent.

`--json` prints the figures as JSON too. Nothing here is a pass/fail test: the exit status is
non-zero only when a request got an unexpected answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from bench.machine import cpu_name

SOURCE = "https://images.example.com/cat.jpg"  # never fetched: no worker reads the queue
LIST = 64
AIM_SINGLES, AIM_LISTS, AIM_GET_P99_MS = 0.5, 0.8, 10.0
GET_RATE = 200.0  # requests per second
RESULT = {
    "source": SOURCE,
    "predictions": [{"index": 281, "label": "tabby", "probability": 0.6}] * 5,
}
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.I)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# -- the HTTP client -------------------------------------------------------------------------


def request_bytes(method: str, path: str, key: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class Connection:
    """One keep-alive HTTP/1.1 connection: a request's bytes in, (status, body) out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def call(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        found = _LENGTH.search(head)
        body = await self.reader.readexactly(int(found.group(1))) if found else b""
        return int(head[9:12]), body

    def close(self) -> None:
        self.writer.close()


async def closed_loop(port: int, raw: bytes, total: int, connections: int) -> float:
    """Send `raw` `total` times over `connections` connections, each sending its next request
    as soon as the last is answered; seconds from the first send to the last answer. Raises on
    any answer but 202."""
    conns = [await Connection.open(port) for _ in range(connections)]
    left = total

    async def run(conn: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, body = await conn.call(raw)
            if status != 202:
                raise RuntimeError(f"submit answered {status}: {body[:500]!r}")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(run(c) for c in conns))
        return time.perf_counter() - started
    finally:
        for c in conns:
            c.close()


async def open_loop(
    port: int, raws: list[bytes], rate: float, count: int, connections: int
) -> list[float]:
    """`count` requests at `rate` per second, each due at its own time and sent then on an idle
    connection (one is opened if none is): seconds from when each was due to its answer."""
    idle: list[Connection] = [await Connection.open(port) for _ in range(connections)]
    opened = list(idle)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def one(raw: bytes, due: float) -> None:
        if idle:
            conn = idle.pop()
        else:
            conn = await Connection.open(port)
            opened.append(conn)
        status, body = await conn.call(raw)
        latencies.append(loop.time() - due)
        idle.append(conn)
        if status != 200 or b'"SUCCESS"' not in body:
            raise RuntimeError(f"GET answered {status}: {body[:500]!r}")

    tasks = []
    start = loop.time() + 0.05
    try:
        for i in range(count):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.ensure_future(one(raws[i % len(raws)], due)))
        await asyncio.gather(*tasks)
    finally:
        for c in opened:
            c.close()
    return latencies


class EventStream:
    """GET /v1/events, read as it streams: the time each job id first shows up in an event."""

    ID = re.compile(rb"[0-9a-f]{10}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.conn: Connection | None = None
        self.status = 0

    async def open(self, port: int, key: str) -> bool:
        """False when the gateway has no such endpoint (or refuses it)."""
        self.conn = await Connection.open(port)
        raw = request_bytes("GET", "/v1/events", key).replace(
            b"\r\n\r\n", b"\r\nAccept: text/event-stream\r\n\r\n", 1
        )
        self.conn.writer.write(raw)
        head = await self.conn.reader.readuntil(b"\r\n\r\n")
        self.status = int(head[9:12])
        if self.status != 200:
            self.conn.close()
            return False
        self.chunked = bool(_CHUNKED.search(head))
        return True

    async def read(self) -> None:
        assert self.conn is not None
        reader, buf = self.conn.reader, b""
        loop = asyncio.get_running_loop()
        while True:
            if self.chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                data = data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
            now = loop.time()
            buf += data
            *events, buf = buf.split(b"\n\n")
            for event in events:
                for found in self.ID.finditer(event):
                    self.seen.setdefault(found.group().decode(), now)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# -- the run ---------------------------------------------------------------------------------


class Results:
    """Final states stored as a worker stores them: worker/backend.py, in this process."""

    def __init__(self, redis_url: str, prefix: str, tenant: str) -> None:
        from celery import Celery

        self.app = Celery(
            "bench-gateway",
            broker=redis_url,
            backend=f"worker.backend:ResultBackend+{redis_url}",
            set_as_current=False,
        )
        options = {"global_keyprefix": prefix} if prefix else {}
        self.app.conf.update(
            result_expires=3600,
            result_backend_transport_options=options,
            broker_transport_options=options,
        )
        self.tenant = tenant

    def store(self, ids: list[str]) -> None:
        """SUCCESS for each job, as one bulk message's images on the queue `celery`."""
        from celery import states
        from celery.app.task import Context

        from core.contract import BULK_TASK_NAME
        from core.lifecycle import TENANT_HEADER

        request = Context(
            {
                "id": str(uuid.uuid4()),
                "task": BULK_TASK_NAME,
                "delivery_info": {"routing_key": "celery"},
                TENANT_HEADER: self.tenant,
                "args": [[{"id": i, "source": SOURCE} for i in ids]],
            }
        )
        self.app.backend.store_many([(i, dict(RESULT), states.SUCCESS) for i in ids], request)

    def close(self) -> None:
        self.app.close()


@contextlib.contextmanager
def setup(redis_url: str | None, work: Path) -> Iterator[dict[str, Any]]:
    """A Redis (private, or REDIS_URL under a prefix of its own), a tenant with a key, a
    gateway process; everything of the run removed after."""
    from core import tenants
    from core.connections import RedisConfig
    from tests.support.gateway import Gateway
    from tests.support.redis_server import RedisServer

    server = None
    prefix = ""
    if redis_url:
        prefix = f"bench-gateway-{uuid.uuid4().hex[:8]}:"
    else:
        server = RedisServer(work / "redis").start()
        redis_url = server.url()
    r = redis.Redis.from_url(redis_url)
    gateway = None
    try:
        config = RedisConfig(redis_url, "", prefix)
        key, tenant = tenants.create_key(r, config, "bench-gateway")
        gateway = Gateway(redis_url, work / "gateway.log", REDIS_KEY_PREFIX=prefix).wait_ready()
        yield {
            "redis_url": redis_url,
            "prefix": prefix,
            "config": config,
            "key": key,
            "tenant": tenant,
            "gateway": gateway,
            "redis": r,
        }
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()
        else:
            for name in r.scan_iter(match=f"{prefix}*", count=1000):
                r.delete(name)
        r.close()


def submit_throughput(
    ctx: dict[str, Any], singles: int, lists: int, rounds: int, connections: list[int]
) -> dict[str, Any]:
    from core.tenants import jobs_key
    from producer import Client

    r: redis.Redis = ctx["redis"]
    tenant, key, port = ctx["tenant"], ctx["key"], ctx["gateway"].port
    gateway_pid: int = ctx["gateway"].proc.pid
    queue = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    client = Client(ctx["redis_url"], key_prefix=ctx["prefix"])
    many = [SOURCE] * LIST
    single_raw = request_bytes(
        "POST", "/v1/jobs", key, json.dumps({"source": SOURCE, "queue": queue}).encode()
    )
    list_raw = request_bytes(
        "POST", "/v1/jobs", key, json.dumps({"sources": many, "queue": queue}).encode()
    )

    def drop() -> None:
        names = list(r.scan_iter(match=f"{ctx['prefix']}{queue}*", count=1000))
        r.delete(jobs_key(ctx["config"], tenant.name), *names)

    def by_client(size: int, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            if size == 1:
                client.submit(SOURCE, queue=queue, tenant=tenant)
            else:
                client.submit_many(many, queue=queue, tenant=tenant)
        return time.perf_counter() - started

    def by_gateway(raw: bytes, count: int, conns: int) -> float:
        return asyncio.run(closed_loop(port, raw, count, conns))

    def timed(run: Callable[[], float], count: int) -> dict[str, float]:
        """Requests per second, and CPU per request of the gateway, redis-server and this
        process (the Client's own work, or the load generator's)."""
        gateway_cpu, server_cpu, own_cpu = cpu_seconds(gateway_pid), redis_cpu(r), os.times()
        seconds = run()
        own = os.times()
        out = {
            "rate": count / seconds,
            "gateway_cpu_ms": (cpu_seconds(gateway_pid) - gateway_cpu) / count * 1000,
            "redis_cpu_ms": (redis_cpu(r) - server_cpu) / count * 1000,
            "caller_cpu_ms": (own.user + own.system - own_cpu.user - own_cpu.system) / count * 1000,
        }
        drop()
        return out

    # Warm-up: connections, scripts, the gateway's key cache, both paths.
    by_client(1, 100)
    by_client(LIST, 10)
    for conns in connections:
        by_gateway(single_raw, 200, conns)
        by_gateway(list_raw, 20, conns)
    drop()
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for _ in range(rounds):
            for kind, raw, size, count in (
                ("singles", single_raw, 1, singles),
                ("lists", list_raw, LIST, lists),
            ):
                runs.setdefault(f"client_{kind}", []).append(
                    timed(lambda: by_client(size, count), count)  # noqa: B023
                )
                for conns in connections:
                    runs.setdefault(f"gateway_{kind}@{conns}", []).append(
                        timed(lambda: by_gateway(raw, count, conns), count)  # noqa: B023
                    )
    finally:
        drop()
        client.close()
    out: dict[str, Any] = {"rounds": runs}
    for name, figures in runs.items():
        out[name] = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
    for kind in ("singles", "lists"):
        for conns in connections:
            gateway = out[f"gateway_{kind}@{conns}"]["rate"]
            out[f"ratio_{kind}@{conns}"] = gateway / out[f"client_{kind}"]["rate"]
    return out


def finished_get(ctx: dict[str, Any], seconds: float, connections: int) -> dict[str, Any]:
    tenant, key, port = ctx["tenant"], ctx["key"], ctx["gateway"].port
    results = Results(ctx["redis_url"], ctx["prefix"], tenant.name)
    ids = [tenant.new_id() for _ in range(LIST)]
    try:
        results.store(ids)
    finally:
        results.close()
    raws = [request_bytes("GET", f"/v1/jobs/{i}", key) for i in ids]
    asyncio.run(open_loop(port, raws, GET_RATE, 100, connections))  # warm-up
    count = int(seconds * GET_RATE)
    latencies = asyncio.run(open_loop(port, raws, GET_RATE, count, connections))
    ms = [v * 1000 for v in latencies]
    return {
        "requests": count,
        "rate": GET_RATE,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


def sse_delay(ctx: dict[str, Any], events: int, spacing: float) -> dict[str, Any]:
    tenant, key, port = ctx["tenant"], ctx["key"], ctx["gateway"].port
    results = Results(ctx["redis_url"], ctx["prefix"], tenant.name)

    async def run() -> dict[str, Any]:
        stream = EventStream()
        if not await stream.open(port, key):
            return {"skipped": f"GET /v1/events answered {stream.status}"}
        reading = asyncio.ensure_future(stream.read())
        loop = asyncio.get_running_loop()
        written: dict[str, float] = {}
        try:
            await asyncio.sleep(0.5)  # the stream's own start (its first read of Redis)
            for n in range(events + 10):
                job = tenant.new_id()
                at = loop.time()
                await loop.run_in_executor(None, results.store, [job])
                if n >= 10:  # the first ten warm it up
                    written[job] = at
                await asyncio.sleep(spacing)
            deadline = loop.time() + 10
            while set(written) - set(stream.seen) and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            reading.cancel()
            stream.close()
        missing = set(written) - set(stream.seen)
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(written)} events never reached the stream")
        ms = [(stream.seen[j] - at) * 1000 for j, at in written.items()]
        return {
            "events": len(ms),
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms),
        }

    try:
        return asyncio.run(run())
    finally:
        results.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    p.add_argument("--singles", type=int, default=3000, help="single submits per timing (3000)")
    p.add_argument("--lists", type=int, default=1000, help="list submits per timing (1000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, client and gateway (3)")
    p.add_argument(
        "--connections",
        default="4,16",
        help="HTTP connections kept busy, one timing per number (4,16)",
    )
    p.add_argument("--get-seconds", type=float, default=10.0, help="seconds of GETs at 200/s")
    p.add_argument("--sse-events", type=int, default=200, help="events timed on the stream")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ns = p.parse_args(argv)
    conns = [int(c) for c in ns.connections.split(",")]
    out: dict[str, Any] = {"cpu": cpu_name(), "cpus": os.cpu_count(), "connections": conns}
    with tempfile.TemporaryDirectory(prefix="imgqueue-bench-gateway-") as tmp:
        try:
            with setup(os.environ.get("REDIS_URL") or None, Path(tmp)) as ctx:
                out["submit"] = submit_throughput(ctx, ns.singles, ns.lists, ns.rounds, conns)
                out["get"] = finished_get(ctx, ns.get_seconds, max(conns))
                out["sse"] = sse_delay(ctx, ns.sse_events, 0.02)
        except Exception:
            log = Path(tmp) / "gateway.log"
            if log.exists():
                print(log.read_text(errors="replace")[-3000:])
            raise
    report(out, ns)
    if ns.json:
        print(json.dumps(out, sort_keys=True))
    return 0


def report(out: dict[str, Any], ns: argparse.Namespace) -> None:
    s = out["submit"]
    print(
        f"{out['cpu']}, {out['cpus']} CPUs; one gateway process (`imgqueue serve`, its "
        f"defaults), redis-server and this process on loopback"
    )
    print(
        f"submit, medians of {ns.rounds} rounds: the client in one thread, in a loop; the "
        "gateway with N keep-alive connections kept busy. CPU per request (caller: the Client's"
        " own, or the HTTP load generator's)"
    )
    print(f"{'':<30}{'per second':>16}{'gateway CPU':>13}{'redis CPU':>11}{'caller CPU':>12}")
    for kind, unit, label in (("singles", "jobs", "one source"), ("lists", "images", "64")):
        names = [(f"Client.submit{'_many(64)' if kind == 'lists' else ''}", f"client_{kind}")]
        names += [(f"POST {label}, N={c}", f"gateway_{kind}@{c}") for c in out["connections"]]
        for title, name in names:
            f = s[name]
            rate = f["rate"] * (LIST if unit == "images" else 1)
            gw = f"{f['gateway_cpu_ms']:.2f} ms" if name.startswith("gateway") else "-"
            print(
                f"{title:<30}{rate:>9.0f} {unit:<6}{gw:>13}{f['redis_cpu_ms']:>8.2f} ms"
                f"{f['caller_cpu_ms']:>9.2f} ms"
            )
    for kind, aim in (("singles", AIM_SINGLES), ("lists", AIM_LISTS)):
        ratios = ", ".join(f"{s[f'ratio_{kind}@{c}']:.2f} (N={c})" for c in out["connections"])
        print(f"ratio gateway / client, {kind:<8} {ratios}; aim >= {aim}")
    g = out["get"]
    print(
        f"GET a finished job at {g['rate']:.0f}/s, {g['requests']} requests: p50 "
        f"{g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms (aim <= {AIM_GET_P99_MS:g}), "
        f"max {g['max_ms']:.2f} ms"
    )
    e = out["sse"]
    if "skipped" in e:
        print(f"SSE delivery delay: skipped, {e['skipped']}")
    else:
        print(
            f"SSE delivery delay, {e['events']} events one every 20 ms: p50 {e['p50_ms']:.2f} ms,"
            f" p99 {e['p99_ms']:.2f} ms, max {e['max_ms']:.2f} ms"
        )


if __name__ == "__main__":
    raise SystemExit(main())
