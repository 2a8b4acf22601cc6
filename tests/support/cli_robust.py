"""What the command-line robustness tests share (test_cli_robust.py in tests/integration and
tests/system): database 12 of the session's redis-server, emptied around each test; a source
no worker ever fetches; loopback servers that are not Redis.

The fixtures `url`, `r`, and the module-scoped `not_redis` and `hangs_up`, are defined here
under those names; a test module imports `url_fixture`, `r_fixture`, `not_redis_fixture` and
`hangs_up_fixture` (never called directly) to use them."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.support.tcp import tcp_server

DB = 12
URL = "http://127.0.0.1:9/{}.jpg"  # never fetched: no worker runs here


@pytest.fixture(name="url")
def url_fixture(redis_server: RedisServer) -> Iterator[str]:
    r = redis.Redis.from_url(redis_server.url(DB))
    r.flushdb()
    yield redis_server.url(DB)
    r.flushdb()
    r.close()


@pytest.fixture(name="r")
def r_fixture(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@contextlib.contextmanager
def loopback_server(reply: bytes | None) -> Iterator[str]:
    """A loopback TCP server that reads what each connection sends first, answers `reply`
    (None: nothing) and hangs up; yields a redis:// URL to it."""

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            if reply is not None:
                conn.recv(65536)
                conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # until the client hangs up: no reset loses the reply
                pass

    with tcp_server(serve) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(name="not_redis", scope="module")
def not_redis_fixture() -> Iterator[str]:
    """An HTTP server, as far as a Redis client can tell: its first command gets a 400."""
    with loopback_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as url:
        yield url


@pytest.fixture(name="hangs_up", scope="module")
def hangs_up_fixture() -> Iterator[str]:
    """A port that accepts each connection, then closes it unanswered."""
    with loopback_server(None) as url:
        yield url
