"""A real HTTP gateway (`python -m producer serve`) on a free loopback port, API keys for it,
and raw HTTP for what `requests` cannot send (a body that trickles, or never ends).

A test module starts one gateway for all its tests (`Gateway(...)` in a module fixture) and
talks to it with `requests`, as any client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import requests

from core import tenants
from core.connections import RedisConfig
from tests.support.cli import imgqueue
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_for


class Gateway:
    """`imgqueue serve --port N` against `redis_url`; stdout and stderr go to `log_path`."""

    def __init__(self, redis_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        full = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "PYTEST"))}
        full.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_url, **env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=full,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> Gateway:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited early:\n{self.log()[-4000:]}")
            with contextlib.suppress(requests.ConnectionError):
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            return False

        wait_for(up, timeout, f"the gateway on port {self.port}", interval=0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def prefixed_gateway(redis_url: str, log_path: Path, prefix: str, **env: str) -> Iterator[Gateway]:
    """A ready gateway whose keys all start with `prefix` (REDIS_KEY_PREFIX), deleted after."""
    gw = Gateway(redis_url, log_path, REDIS_KEY_PREFIX=prefix, **env).wait_ready()
    try:
        yield gw
    finally:
        gw.stop()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}*", count=1000):
            r.delete(key)
        r.close()


def create_key(redis_url: str, tenant: str, *options: str, prefix: str = "") -> str:
    """A new API key for `tenant` (`imgqueue keys create`; options such as `--max-queued 1`)."""
    done = imgqueue(
        redis_url, "--key-prefix", prefix, "keys", "create", "--tenant", tenant, *options
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]  # the key is the last line
    assert key.startswith("iq_"), done.stdout
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def raw_request(
    port: int, start: str, headers: dict[str, str], body: bytes = b"", timeout: float = 10
) -> tuple[bytes, float]:
    """Send a request line (`POST /v1/jobs HTTP/1.1`), its headers and `body` on a plain
    socket, and read until the server closes or resets the connection: (what it answered,
    seconds it took)."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"{start}\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # a refused body is not read
            while chunk := s.recv(65536):
                answer += chunk
    return answer, time.monotonic() - began


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0: none came)."""
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 else 0


def make_key(redis_url: str, tenant: str, prefix: str = "", **options: object) -> str:
    """As `create_key`, in this process (no CLI start-up): `queues=("bulk",)`, `max_queued=1`."""
    r = redis.Redis.from_url(redis_url)
    try:
        config = RedisConfig(redis_url, "", prefix)
        key, _ = tenants.create_key(r, config, tenant, **options)  # type: ignore[arg-type]
    finally:
        r.close()
    return key
