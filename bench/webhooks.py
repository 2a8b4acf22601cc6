"""`python -m bench.webhooks [--jobs 6000]`: how fast one webhook dispatcher delivers.

Starts a private redis-server (or uses REDIS_URL, under a key prefix of its own), a loopback
receiver in its own process that answers every POST with 204 at once (asyncio, keep-alive),
and one real dispatcher (`python -m services.webhooks`) at its defaults. Then stores the jobs'
results and completion events with the worker's own backend (worker/backend.py's store, 64 per
call as a bulk message's images are), so the stream holds exactly what a worker writes, and
waits for every POST.

Prints the deliveries per second (jobs / time from the first event to the last POST), the time
from the last event to the last POST, the ratio to the aim of 1,000 deliveries/s, the largest
backlog and backlog age the dispatcher's /metrics showed, and checks that every job was POSTed
once with a signature that verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from bench.machine import cpu_name

AIM = 1000.0  # deliveries per second, one dispatcher (issue 25)
SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdef012").decode()
RESULT = {
    "source": "cat.jpg",
    "predictions": [{"index": 281, "label": "tabby", "probability": 0.6}] * 5,
}
ROOT = Path(__file__).resolve().parents[1]


# -- the receiver, in its own process --------------------------------------------------------


class _Hook(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for POSTs with a Content-Length: 204 to each."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            found = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            length = int(found.group(1)) if found else 0
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.state.record(head, body)
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


class _State:
    def __init__(self, count: Synchronized[int], last: Synchronized[float], out: Any) -> None:
        self.count, self.last, self.out = count, last, out
        self.ids: set[bytes] = set()
        self.duplicates = 0
        self.sample: tuple[bytes, bytes] | None = None

    def record(self, head: bytes, body: bytes) -> None:
        found = re.search(rb"\r\nwebhook-id:\s*(\S+)", head, re.I)
        webhook_id = found.group(1) if found else b""
        if webhook_id in self.ids:
            self.duplicates += 1
        self.ids.add(webhook_id)
        if self.sample is None:
            self.sample = (head, body)
        self.last.value = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        self.count.value += 1


def _receive(port: Any, count: Any, last: Any, stop: Any, out: Any) -> None:
    async def serve() -> None:
        state = _State(count, last, out)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Hook(state), "127.0.0.1", 0, backlog=1024)
        port.value = server.sockets[0].getsockname()[1]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()
        head, body = state.sample or (b"", b"")
        out.send((head, body, state.duplicates, len(state.ids)))

    asyncio.run(serve())


# -- the run ---------------------------------------------------------------------------------


def _store_events(redis_url: str, prefix: str, hook: str, jobs: int) -> tuple[float, float]:
    """Results and events as a worker stores a bulk message's images; (first, last) monotonic
    times of the stores."""
    from celery import Celery, states
    from celery.app.task import Context

    from core.contract import BULK_TASK_NAME
    from core.lifecycle import WEBHOOK_HEADER

    app = Celery("bench-webhooks", backend=f"worker.backend:ResultBackend+{redis_url}")
    options = {"global_keyprefix": prefix} if prefix else {}
    app.conf.update(result_expires=3600, result_backend_transport_options=options)
    backend = app.backend
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    first = time.monotonic()
    for start in range(0, jobs, 64):
        chunk = ids[start : start + 64]
        request = Context(
            {
                "id": str(uuid.uuid4()),
                "task": BULK_TASK_NAME,
                "delivery_info": {"routing_key": "celery"},
                WEBHOOK_HEADER: hook,
                "args": [[{"id": i, "source": "cat.jpg"} for i in chunk]],
            }
        )
        backend.store_many([(i, dict(RESULT), states.SUCCESS) for i in chunk], request=request)
    last = time.monotonic()
    app.close()
    return first, last


def _metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("imgqueue_webhook_backlog"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _verify(head: bytes, body: bytes) -> bool:
    pairs = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line]
    fields = {name.strip().lower(): value.strip() for name, value in pairs}
    msg_id, stamp = fields[b"webhook-id"], fields[b"webhook-timestamp"]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = msg_id + b"." + stamp + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    given = [s.split(b",", 1)[1] for s in fields[b"webhook-signature"].split()]
    return any(hmac.compare_digest(expected, g) for g in given)


def run(jobs: int, redis_url: str | None, timeout: float) -> dict[str, Any]:
    from tests.support.ports import free_port
    from tests.support.redis_server import RedisServer

    ctx = multiprocessing.get_context("spawn")
    port, count, last = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("d", 0.0)
    stop = ctx.Event()
    here, there = ctx.Pipe()
    receiver = ctx.Process(target=_receive, args=(port, count, last, stop, there), daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        prefix = ""
        if redis_url:
            prefix = f"bench-webhooks-{uuid.uuid4().hex[:8]}:"
        else:
            server = RedisServer(Path(tmp) / "redis").start()
            redis_url = server.url()
        metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
        env.update(
            REDIS_URL=redis_url,
            REDIS_KEY_PREFIX=prefix,
            WEBHOOK_SECRET=SECRET,
            FETCH_ALLOW_NETWORKS="127.0.0.0/8",
            METRICS_PORT=str(metrics_port),
            METRICS_ADDR="127.0.0.1",
            PYTHONPATH=str(ROOT),
            LOG_LEVEL="WARNING",
        )
        log = open(Path(tmp) / "dispatcher.log", "wb")  # noqa: SIM115  (closed below)
        dispatcher = subprocess.Popen(
            [sys.executable, "-m", "services.webhooks"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        receiver.start()
        try:
            _wait(lambda: port.value > 0 and bool(_metrics(metrics_port) or _up(metrics_port)))
            hook = f"http://127.0.0.1:{port.value}/hook"
            first, last_event = _store_events(redis_url, prefix, hook, jobs)
            deadline = time.monotonic() + timeout
            backlog: dict[str, float] = {}
            while count.value < jobs and time.monotonic() < deadline:
                for name, value in _metrics(metrics_port).items():
                    backlog[name] = max(backlog.get(name, 0.0), value)
                time.sleep(0.2)
            delivered, last_post = count.value, last.value
        finally:
            stop.set()
            dispatcher.terminate()
            code = dispatcher.wait(30)
            log.close()
            if server is not None:
                server.stop()
        head, body, duplicates, unique = here.recv() if here.poll(10) else (b"", b"", -1, -1)
        receiver.join(10)
        dispatcher_log = (Path(tmp) / "dispatcher.log").read_text(errors="replace")
    return {
        "jobs": jobs,
        "delivered": delivered,
        "unique": unique,
        "duplicates": duplicates,
        "store_s": last_event - first,
        "total_s": last_post - first,
        "tail_s": last_post - last_event,
        "rate": delivered / (last_post - first) if delivered else 0.0,
        "signature_ok": bool(head) and _verify(head, body),
        "exit": code,
        "backlog_max": backlog,
        "log_tail": dispatcher_log[-2000:],
    }


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("the dispatcher or the receiver did not start")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--jobs", type=int, default=6000, help="jobs with a webhook (6000)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for POSTs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ns = parser.parse_args(argv)
    out = run(ns.jobs, os.environ.get("REDIS_URL") or None, ns.timeout)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; one dispatcher at its defaults, loopback 204")
    print(f"jobs                         {out['jobs']}")
    print(f"delivered                    {out['delivered']} ({out['unique']} distinct ids)")
    print(f"events stored in             {out['store_s']:.2f} s (the worker's own store)")
    print(f"first event to last POST     {out['total_s']:.2f} s")
    print(f"last event to last POST      {out['tail_s']:.2f} s")
    print(f"deliveries per second        {out['rate']:.0f}")
    print(f"ratio to the 1,000/s aim     {out['rate'] / AIM:.2f}")
    for name, value in sorted(out["backlog_max"].items()):
        print(f"max {name:<40} {value:g}")
    print(f"signature verifies           {out['signature_ok']}")
    if ns.json:
        print(json.dumps({k: v for k, v in out.items() if k != "log_tail"}, sort_keys=True))
    ok = out["delivered"] == out["jobs"] and out["signature_ok"] and out["duplicates"] == 0
    if not ok:
        print(out["log_tail"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
