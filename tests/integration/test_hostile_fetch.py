"""Hostile servers: a real loopback HTTP server that stalls, lies, redirects or inflates, and a
name that rebinds to another address; fetched in-process (tests/unit/test_hostile_fetch.py:
paths and URLs refused without connecting; tests/system/test_hostile_fetch.py: the retry policy
through a real worker)."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.paths import SAMPLES
from tests.support.sources import (
    server_fixture,  # noqa: F401  (the fixture `server`)
    tree_fixture,  # noqa: F401  (the fixture `tree`)
)
from worker.errors import FetchFailed, SourceNotAllowed, SourceNotFound, TooLarge
from worker.fetch import fetch
from worker.settings import Settings

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def web(**kw: Any) -> Settings:
    return Settings(fetch_allow_networks=LOOPBACK, **kw)


def test_fetches_from_an_allowed_server(server: tuple[str, dict[str, int]]) -> None:
    base, _ = server
    got = fetch(f"{base}/cat.jpg", web())
    assert got.data == (SAMPLES / "cat.jpg").read_bytes()
    assert fetch(f"{base}/redirect?to=/cat.jpg", web()).final == f"{base}/cat.jpg"


def fake_resolver(answers: list[str], asked: list[str]) -> Callable[..., Any]:
    """DNS for images.example: each lookup gets the next answer (the last one sticks)."""
    real = socket.getaddrinfo

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != "images.example":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addr = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))]

    return resolve


def test_dns_rebinding_connects_to_the_vetted_address(
    server: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once per hop and the socket goes to that vetted address: a
    second, different answer (rebinding to an internal host) is never used."""
    base, _ = server
    port = base.rsplit(":", 1)[1]
    asked: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(["127.0.0.1", "10.9.9.9"], asked))
    got = fetch(f"http://images.example:{port}/cat.jpg", web())
    assert got.data == (SAMPLES / "cat.jpg").read_bytes()
    assert asked == ["images.example"]
    # Any private address among the answers blocks the host.
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(["10.9.9.9"], asked))
    with pytest.raises(SourceNotAllowed, match=r"10\.9\.9\.9"):
        fetch(f"http://images.example:{port}/cat.jpg", web())


@pytest.mark.parametrize(
    ("path", "error", "fragment"),
    [
        ("/redirect?to=http://10.0.0.1/cat.jpg", SourceNotAllowed, "non-public"),
        ("/redirect?to=http://169.254.169.254/latest/meta-data/", SourceNotAllowed, "non-public"),
        ("/redirect?to=file:///etc/passwd", SourceNotAllowed, "forbidden scheme"),
        ("/loop", FetchFailed, "redirects"),
        ("/status/302", FetchFailed, "without a Location"),
        ("/status/404", SourceNotFound, "404"),
        ("/status/410", SourceNotFound, "410"),
        ("/status/403", FetchFailed, "403"),
    ],
)
def test_redirect_hops_and_statuses(
    server: tuple[str, dict[str, int]], path: str, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment) as info:
        fetch(server[0] + path, web())
    assert not getattr(info.value, "transient", False)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/status/500", "HTTP 500"),
        ("/status/503", "HTTP 503"),
        ("/status/429", "HTTP 429"),
        ("/reset", "failed"),
        ("/hang?s=3", "timed out"),
    ],
)
def test_transient_failures_are_marked_for_retry(
    server: tuple[str, dict[str, int]], path: str, fragment: str
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=fragment) as info:
        fetch(server[0] + path, web(fetch_read_timeout=0.5))
    assert info.value.transient
    assert time.monotonic() - started < 2.5  # the read timeout, not the server's 3 s


def test_redirect_limit_is_a_setting(server: tuple[str, dict[str, int]]) -> None:
    base, _ = server
    two = "/redirect?to=/redirect%3Fto%3D/cat.jpg"
    assert fetch(base + two, web(fetch_max_redirects=2)).data
    with pytest.raises(FetchFailed, match="more than 1 redirects"):
        fetch(base + two, web(fetch_max_redirects=1))


def test_byte_cap_is_enforced_while_streaming(server: tuple[str, dict[str, int]]) -> None:
    base, _ = server
    size = (SAMPLES / "cat.jpg").stat().st_size
    # Declared too large: refused from the header.
    with pytest.raises(TooLarge, match=str(size)):
        fetch(f"{base}/cat.jpg", web(max_image_bytes=size - 1))
    # No Content-Length at all: refused once the stream passes the cap.
    with pytest.raises(TooLarge, match="download passed"):
        fetch(f"{base}/lie/cat.jpg", web(max_image_bytes=size // 2))


def test_compressed_bodies_are_not_inflated(server: tuple[str, dict[str, int]]) -> None:
    """A gzip bomb arrives as its compressed bytes (and then fails to decode as an image)."""
    got = fetch(f"{server[0]}/gzip?mb=64", web(max_image_bytes=1 << 20))
    assert len(got.data) < 1 << 20
    assert got.data[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("path", ["/drip?bytes=10000&delay=0.05", "/drip-headers?delay=0.05"])
def test_slow_drip_servers_hit_the_total_deadline(
    server: tuple[str, dict[str, int]], path: str
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="FETCH_TOTAL_TIMEOUT") as info:
        fetch(server[0] + path, web(fetch_total_timeout=1.0, fetch_read_timeout=5))
    assert info.value.transient
    assert time.monotonic() - started < 2.5
