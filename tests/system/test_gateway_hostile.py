"""Hostile and unlucky clients of the HTTP gateway: huge or deeply nested bodies, bodies that
trickle, browsers from other origins, a Redis that is gone. A real `imgqueue serve` process
with BODY_TIMEOUT_S=1 and CORS_ORIGINS set; raw sockets where `requests` would not misbehave.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from core import tenants
from core.connections import RedisConfig
from tests.support.gateway import (
    Gateway,
    bearer,
    make_key,
    prefixed_gateway,
    raw_request,
    status_of,
)
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.redis_server import with_shipped_users

PREFIX = f"gwhostile{os.getpid()}:"


ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {"BODY_TIMEOUT_S": "1", "CORS_ORIGINS": ORIGIN}
    with prefixed_gateway(redis_url, log, PREFIX, **env) as gw:
        yield gw


@pytest.fixture(scope="module")
def key(redis_url: str, gateway: Gateway) -> str:
    return make_key(redis_url, "mallory", PREFIX)


def json_head(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}


def test_ten_megabytes_of_nested_arrays_are_refused_unread(gateway: Gateway, key: str) -> None:
    body = b"[" * (10 * 1024 * 1024)
    # Announced: refused on its Content-Length, before a byte of it is read.
    head = json_head(key, **{"Content-Length": str(len(body))})
    answer, took = raw_request(gateway.port, "POST /v1/jobs HTTP/1.1", head, body[: 64 * 1024])
    assert status_of(answer) == 413 and b'"type":"PayloadTooLarge"' in answer
    assert took < 1.0
    # Not announced (chunked): counted as it arrives, refused past MAX_JSON_BYTES.
    chunk = b"[" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(24))
    head = json_head(key, **{"Transfer-Encoding": "chunked"})
    answer, took = raw_request(gateway.port, "POST /v1/jobs HTTP/1.1", head, chunks)
    assert status_of(answer) == 413 and took < 1.0
    assert requests.get(f"{gateway.url}/healthz", timeout=5).status_code == 200


def test_nesting_within_the_size_limit_is_422_at_once(gateway: Gateway, key: str) -> None:
    body = b"[" * 500_000 + b"]" * 500_000  # under 1 MiB
    began = time.monotonic()
    answer = requests.post(f"{gateway.url}/v1/jobs", data=body, headers=json_head(key), timeout=10)
    assert time.monotonic() - began < 1.0
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "body"
    assert "recursion" in answer.json()["detail"]


def test_trickling_bodies_are_cut_off_and_hold_no_thread(gateway: Gateway, key: str) -> None:
    """Sixty clients stall mid-body (more than the thread pool's 40 threads) and one trickles a
    byte every 0.1 s: each gets 408 after BODY_TIMEOUT_S and its connection closed, while a
    request served by a thread (the key lookup is sync) is answered at once meanwhile."""
    head = json_head(key, **{"Content-Length": "1000"})
    request = "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in head.items()
    )
    began = time.monotonic()
    stalled: list[socket.socket] = []
    trickled: list[bytes] = []

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
            s.sendall(request.encode() + b"\r\n")
            with contextlib.suppress(OSError):  # until the gateway closes the connection
                for _ in range(100):
                    s.sendall(b" ")
                    time.sleep(0.1)
            trickled.append(read_all(s))

    thread = threading.Thread(target=trickle)
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            stalled.append(s)
            s.sendall(request.encode() + b"\r\n" + b'{"source": ')
        thread.start()
        meanwhile = requests.get(f"{gateway.url}/v1/jobs/x", headers=bearer(key), timeout=10)
        assert meanwhile.status_code == 404 and meanwhile.elapsed.total_seconds() < 0.5
        for s in stalled:
            answer = read_all(s)  # to the end: the gateway closes the connection
            assert status_of(answer) == 408 and b'"type":"RequestTimeout"' in answer
    finally:
        for s in stalled:
            s.close()
        if thread.ident is not None:  # started
            thread.join(15)
    assert trickled and status_of(trickled[0]) == 408
    assert 0.9 < time.monotonic() - began < 5


def read_all(s: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_cors_answers_only_the_configured_origin(gateway: Gateway, key: str) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = requests.options(
        f"{gateway.url}/v1/jobs", headers={"Origin": ORIGIN, **ask}, timeout=5
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = requests.options(
        f"{gateway.url}/v1/jobs", headers={"Origin": "https://evil.example", **ask}, timeout=5
    )
    assert "access-control-allow-origin" not in other.headers
    # Errors carry the header too, so the page can read why it was refused.
    refused = requests.get(f"{gateway.url}/v1/jobs/x", headers={"Origin": ORIGIN}, timeout=5)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "location" in refused.headers["access-control-expose-headers"].lower()


def test_a_redis_that_is_gone_is_503_with_retry_after(tmp_path: Path) -> None:
    gone = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gw = Gateway(gone, tmp_path / "gateway.log").wait_ready()
    try:
        assert requests.get(f"{gw.url}/healthz", timeout=5).status_code == 200  # alive
        for answer in (
            requests.get(f"{gw.url}/readyz", timeout=10),
            requests.post(
                f"{gw.url}/v1/jobs", json={"source": "a.jpg"}, headers=bearer("iq_x" * 8)
            ),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.json()["type"] == "Unavailable"
            assert int(answer.headers["retry-after"]) > 0
            assert gone.split("//")[1] not in answer.text  # where Redis is: the log's
    finally:
        gw.stop()
    assert "Redis cannot be reached" in gw.log()


def test_serve_without_the_gateway_extra_says_so(tmp_path: Path) -> None:
    """A producer-only install: fastapi cannot be imported."""
    shim = tmp_path / "fastapi"
    shim.mkdir()
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "producer", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "this command needs the gateway extra: pip install '.[gateway]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_shipped_gateway_redis_user_serves_the_whole_api(tmp_path: Path) -> None:
    """deploy/redis.conf's `gateway` user has every right the gateway uses, and no more is
    needed: keys, submits, idempotency, reads, waits (pub/sub), groups, cancels, readiness."""
    server = with_shipped_users(tmp_path / "redis")
    admin = redis.Redis(port=server.port, username="admin", password="imgqueue-admin-dev")
    try:
        key, _ = tenants.create_key(admin, RedisConfig(), "acme")
        url = f"redis://gateway:imgqueue-gateway-dev@127.0.0.1:{server.port}/0"
        gw = Gateway(url, tmp_path / "gateway.log").wait_ready()
        try:
            base, auth = gw.url, bearer(key)
            assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
            body = {"sources": ["a.jpg", "b.jpg"], "group": True}
            headers = {**auth, "Idempotency-Key": "k"}
            sent = requests.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=10)
            again = requests.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=10)
            assert sent.status_code == 202 and again.json() == sent.json()
            job, group = sent.json()["ids"][0], sent.json()["group"]
            waited = requests.get(f"{base}/v1/jobs/{job}?wait=0.2", headers=auth, timeout=10)
            assert waited.json()["state"] == "PENDING"
            assert requests.get(f"{base}/v1/groups/{group}", headers=auth).json()["total"] == 2
            results = requests.get(f"{base}/v1/groups/{group}/results", headers=auth)
            assert len(results.text.splitlines()) == 2
            cancel = requests.post(f"{base}/v1/jobs/{job}/cancel", headers=auth, timeout=10)
            assert cancel.json()["outcome"] == "cancelled"
        finally:
            gw.stop()
        log = gw.log()
        assert "Traceback" not in log and "wake-ups" not in log and "refused" not in log
    finally:
        admin.close()
        server.stop()
