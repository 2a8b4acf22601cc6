"""Webhook tests' parts: a loopback receiver recording every POST, an independent signature
check, the dispatcher (`python -m services.webhooks`) as a real process, and each test's own key
prefix to XADD events under.

The fixtures `receiver` and `setup` are defined here under those names; a test module imports
`receiver_fixture` and `setup_fixture` (never called directly) to use them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from core.contract import result_key
from core.lifecycle import EVENTS_STREAM, WEBHOOK_DEAD_LETTERS, WEBHOOK_RETRIES
from tests.support.paths import ROOT

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
_PREFIXES = itertools.count()


# -- a receiver on loopback ------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request had arrived
    port: int = 0  # the client's port: one per connection the dispatcher made


class Receiver:
    """A threaded HTTP server recording every POST. Paths:

    /ok                 200
    /flaky/<n>/<name>   500 for the first n requests of that path, then 200
    /status/<code>      that status
    /hang               holds the request until the test ends, then 200
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as most receivers

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                    self.client_address[1],
                )
                with receiver.lock:
                    receiver.requests.append(got)
                    seen = sum(1 for r in receiver.requests if r.path == self.path)
                parts = self.path.strip("/").split("/")
                if parts[0] == "hang":
                    receiver.release.wait(30)
                    code = 200
                elif parts[0] == "flaky":
                    code = 500 if seen <= int(parts[1]) else 200
                elif parts[0] == "status":
                    code = int(parts[1])
                else:
                    code = 200
                with contextlib.suppress(OSError):
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    """A receiver on loopback for one test (see Receiver's paths)."""
    r = Receiver()
    yield r
    r.close()


def verify(request: Received, secret: str = SECRET) -> dict[str, Any]:
    """Check a delivery as a receiver would, with nothing of services.webhooks: the signature is
    HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>" with the key: base64-decoded
    after `whsec_`, else the secret's UTF-8 bytes (a tenant's secret)."""
    msg_id = request.headers["webhook-id"]
    timestamp = request.headers["webhook-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60, timestamp
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"))
    else:
        key = secret.encode()
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + request.body, hashlib.sha256).digest()
    ).decode()
    given = [s.split(",", 1)[1] for s in request.headers["webhook-signature"].split()]
    assert any(hmac.compare_digest(expected, s) for s in given), request.headers
    assert request.headers["content-type"] == "application/json", request.headers
    body: dict[str, Any] = json.loads(request.body)
    return body


# -- the dispatcher, a real process ----------------------------------------------------------


class Dispatcher:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.webhooks"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@dataclass
class Setup:
    """One test's keys, its Redis client and a way to start dispatchers on them."""

    r: redis.Redis
    prefix: str
    env: dict[str, str]
    start: Callable[..., Dispatcher]

    def event(self, task_id: str, webhook: str, *, state: str = "SUCCESS", **extra: str) -> None:
        fields = {"kind": "job", "id": task_id, "state": state, "error": "", "queue": "celery"}
        fields.update(group="", webhook=webhook, time=f"{time.time():.3f}", **extra)
        self.r.xadd(self.prefix + EVENTS_STREAM, fields)  # type: ignore[arg-type]

    def result(self, task_id: str, meta: dict[str, Any]) -> None:
        self.r.set(result_key(task_id, self.prefix), json.dumps({"task_id": task_id, **meta}))

    def dead(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.r.lrange(self.prefix + WEBHOOK_DEAD_LETTERS, 0, -1)]

    def retrying(self) -> int:
        return int(self.r.zcard(self.prefix + WEBHOOK_RETRIES))


@pytest.fixture(name="setup")
def setup_fixture(redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    """This test's own REDIS_KEY_PREFIX and dispatchers: stopped cleanly and its keys deleted
    at the end."""
    prefix = f"wh{os.getpid()}-{next(_PREFIXES)}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "PYTEST"))}
    env.update(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        PYTHONPATH=str(ROOT),
        WEBHOOK_SECRET=SECRET,
        FETCH_ALLOW_NETWORKS="127.0.0.0/8",
        WEBHOOK_RETRY_BACKOFF="0.05",
        WEBHOOK_TIMEOUT="5",
    )
    started: list[Dispatcher] = []

    def start(**overrides: str) -> Dispatcher:
        d = Dispatcher({**env, **overrides}, tmp_path / f"dispatcher-{len(started)}.log")
        started.append(d)
        return d

    client = redis.Redis.from_url(redis_url)
    yield Setup(client, prefix, env, start)
    for d in started:
        running = d.proc.poll() is None
        code = d.stop()  # SIGTERM: in-flight attempts end, then exit 0
        assert code == 0 or not running, f"unclean stop ({code}):\n{d.log()[-3000:]}"
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()
