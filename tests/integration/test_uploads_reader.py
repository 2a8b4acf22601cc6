"""The gateway's read_files (uploads.py), through a real uvicorn server on loopback:
multipart bodies read as they stream, files over the limit refused while the client is
still sending."""

from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.gateway import problems
from services.gateway.settings import GatewaySettings
from services.gateway.uploads import read_files, read_form
from tests.support.ports import free_port
from tests.support.waiting import wait_for

MiB = 1024 * 1024


BOUNDARY = "imgqueue-test-boundary"


@dataclass(frozen=True)
class Small:
    upload_max_bytes: int = 1000


async def upload(request: Request) -> Response:
    files = await read_files(request, GatewaySettings())  # the default: 20 MiB per file
    return JSONResponse({"files": [[n, len(d), hashlib.sha256(d).hexdigest()] for n, d in files]})


async def small(request: Request) -> Response:
    form = await read_form(request, Small(), max_files=2)
    return JSONResponse({"files": [[n, len(d)] for n, d in form.files], "fields": form.fields})


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, problems.Problem)
    return problems.response(exc)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    app = Starlette(
        routes=[
            Route("/upload", upload, methods=["POST"]),
            Route("/small", small, methods=["POST"]),
        ],
        exception_handlers={problems.Problem: on_problem},
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    wait_for(lambda: running.started, 10, "uvicorn to start")
    yield "127.0.0.1", port
    running.should_exit = True
    thread.join(10)


def url(server: tuple[str, int], path: str) -> str:
    return f"http://{server[0]}:{server[1]}{path}"


def test_files_are_read_in_order_with_their_names_and_the_fields_beside_them(
    server: tuple[str, int],
) -> None:
    one, two = b"\xff\xd8first image" * 1000, bytes(range(256)) * 300
    answer = requests.post(
        url(server, "/upload"),
        files=[("file", ("cat.jpg", one)), ("file", ("dog.png", two))],
        data={"top_k": "3"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["files"] == [
        ["cat.jpg", len(one), hashlib.sha256(one).hexdigest()],
        ["dog.png", len(two), hashlib.sha256(two).hexdigest()],
    ]
    # Text fields come back apart from the files (a route reads its options there).
    small_one = requests.post(
        url(server, "/small"),
        files=[("file", ("a.jpg", b"x" * 1000))],
        data={"top_k": "3"},
        timeout=30,
    )
    assert small_one.json() == {"files": [["a.jpg", 1000]], "fields": {"top_k": "3"}}


def _part_head(name: str = "file", filename: str = "big.jpg") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
        "\r\nContent-Type: image/jpeg\r\n\r\n"
    ).encode()


def _request_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], Any]:
    """The status, headers and JSON body of the one response on `sock`."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # closed under the rest of our body: what came is here
            break
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        if length and len(body) >= length[0]:
            break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def test_a_25_mib_file_is_refused_with_413_before_the_client_has_sent_it(
    server: tuple[str, int],
) -> None:
    size = 25 * MiB
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    head = _part_head()
    total = len(head) + size + len(closing)
    # The client sends 21 MiB (past the 20 MiB limit) and then waits without sending the other
    # 4 MiB: only a server that answers while the body is still coming can reply at all.
    held_back = 4 * MiB
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(_request_head("/upload", total) + head)
        sent, chunk = 0, b"\xab" * (64 * 1024)
        while sent < size - held_back:
            if select.select([sock], [], [], 0)[0]:  # the answer is in: stop sending
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):  # refused and closed: stop too
                break
            sent += len(chunk)
        status, headers, problem = _read_response(sock, timeout=30)
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert problem["type"] == "PayloadTooLarge"
    assert "UPLOAD_MAX_BYTES" in problem["detail"]
    assert headers.get("connection") == "close"
    # Answered, and the last 4 MiB never left the client: the server did not wait for them.
    assert sent <= size - held_back


def test_a_content_length_past_the_limits_is_refused_before_any_of_the_body(
    server: tuple[str, int],
) -> None:
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(_request_head("/upload", 50 * 1024**3))  # 50 GiB announced, none sent
        status, _, problem = _read_response(sock, timeout=10)
    assert status == 413
    assert "nothing was read" in problem["detail"]


def test_too_many_files_no_file_an_empty_file_or_no_multipart_are_refused(
    server: tuple[str, int],
) -> None:
    three = [("file", (f"{i}.jpg", b"x")) for i in range(3)]
    answer = requests.post(url(server, "/small"), files=three, timeout=30)
    assert (answer.status_code, answer.json()["type"]) == (413, "PayloadTooLarge")
    assert "more than 2 files" in answer.json()["detail"]

    over = requests.post(
        url(server, "/small"), files=[("file", ("a.jpg", b"x" * 1001))], timeout=30
    )
    assert over.status_code == 413 and "UPLOAD_MAX_BYTES (1000 bytes)" in over.json()["detail"]

    none = requests.post(url(server, "/small"), files=[("top_k", (None, "3"))], timeout=30)
    assert none.status_code == 422
    assert none.json()["errors"] == [
        {"field": "file", "message": "no image: send it in a part named file"}
    ]

    empty = requests.post(
        url(server, "/small"),
        files=[("file", ("a.jpg", b"x")), ("file", ("b.jpg", b""))],
        timeout=30,
    )
    assert (empty.status_code, empty.json()["type"]) == (422, "InvalidSource")
    assert empty.json()["errors"][0]["field"] == "file.1"

    plain = requests.post(url(server, "/small"), json={"sources": ["cat.jpg"]}, timeout=30)
    assert (plain.status_code, plain.json()["type"]) == (400, "BadRequest")

    long_field = requests.post(
        url(server, "/small"),
        files=[("file", ("a.jpg", b"x")), ("note", (None, "n" * (64 * 1024 + 1)))],
        timeout=30,
    )
    assert long_field.status_code == 413 and "'note'" in long_field.json()["detail"]
