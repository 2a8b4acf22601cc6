"""Hostile URLs: the address policy as a table (never by connecting), malformed URLs as permanent
named errors, encoding and redaction (tests/integration/test_hostile_urls.py: odd names fetched
from a loopback server; tests/system/test_hostile_urls.py: through a worker)."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from core import urls
from core.addresses import blocked_reason, embedded_ipv4
from core.redaction import display_url, redact_text
from worker.errors import InvalidArguments, SourceNotAllowed
from worker.fetch import fetch
from worker.settings import Settings

ip = ipaddress.ip_address


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


# One address from every range the policy denies, as test data only: nothing connects to them.
BLOCKED = [
    "0.1.2.3",
    "10.1.2.3",
    "100.64.0.1",
    "127.0.0.1",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.9",
    "192.0.2.1",
    "192.31.196.1",
    "192.52.193.1",
    "192.88.99.1",
    "192.168.1.1",
    "192.175.48.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:8.8.8.8",
    "::8.8.8.8",
    "64:ff9b::808:808",
    "64:ff9b:1::1",
    "100::1",
    "2001::1",
    "2001:2::1",
    "2001:db8::1",
    "2002:808:808::1",
    "2620:4f:8000::1",
    "3fff::1",
    "5f00::1",
    "fc00::1",
    "fd12::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "4000::1",
]


PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::1"]


@pytest.mark.parametrize("address", BLOCKED)
def test_special_purpose_addresses_are_blocked(address: str) -> None:
    assert blocked_reason(ip(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ip(address)) is None


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # mapped
        ("::127.0.0.1", "127.0.0.1"),  # compatible
        ("::ffff:0:127.0.0.1", "127.0.0.1"),  # translated
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64
        ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),  # local-use NAT64
        ("2002:a9fe:a9fe::1", "169.254.169.254"),  # 6to4
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo (RFC 4380 example)
    ],
)
def test_every_embedded_ipv4_form_is_found_and_judged(address: str, inner: str) -> None:
    assert str(embedded_ipv4(ip(address))) == inner
    # Even where the operator allows the IPv6 range (a NAT64 prefix, say), the IPv4 address
    # inside is still judged.
    allow = (ipaddress.ip_network(f"{address}/128"),)
    why = blocked_reason(ip(address), allow)
    assert why is not None and inner in why


def test_the_allowlist_opens_ranges_but_not_what_they_carry() -> None:
    assert blocked_reason(ip("127.0.0.1"), LOOPBACK) is None
    assert blocked_reason(ip("::ffff:127.0.0.1"), LOOPBACK) is None
    assert blocked_reason(ip("10.0.0.1"), LOOPBACK) is not None
    nat64 = (ipaddress.ip_network("64:ff9b::/96"),)
    assert blocked_reason(ip("64:ff9b::808:808"), nat64) is None  # 8.8.8.8 through NAT64
    assert blocked_reason(ip("64:ff9b::a00:1"), nat64) is not None  # 10.0.0.1 through NAT64


@pytest.mark.parametrize(
    "url",
    [
        "http://a..b/x.jpg",
        "http://[::1/x.jpg",
        "http://[::zz]/x.jpg",
        "http://host:0/x.jpg",
        "http://host:99999/x.jpg",
        "http://host:port/x.jpg",
        "http://exa mple.com/x.jpg",
        "http://ex\tample.com/x.jpg",
        "http://example.com/x\r\nHost: evil/",
        "http://" + "a" * 64 + ".com/x.jpg",
        "http://" + ".".join(["a" * 60] * 5) + "/x.jpg",
        "http:///x.jpg",
        "http://user@/x.jpg",
    ],
)
def test_malformed_urls_are_permanent_named_errors(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidArguments):
        fetch(url, Settings())
    assert time.monotonic() - started < 1  # no DNS, no connection, no retry


def test_paths_and_queries_are_encoded_as_browsers_do() -> None:
    parsed = urls.parse("http://Example.COM/ü dir/a b.jpg?q=ü x&s=1%2F#frag")
    assert parsed.host == "example.com" and parsed.port == 80
    assert parsed.target == "/%C3%BC%20dir/a%20b.jpg?q=%C3%BC%20x&s=1%2F"
    assert urls.parse("https://Bücher.example/x").host == "xn--bcher-kva.example"
    assert urls.parse("http://[::1]:8080/").host_header == "[::1]:8080"
    with pytest.raises(SourceNotAllowed):
        urls.parse("http://a..b/", redirect=True)  # the server's fault, not the caller's


# -- secrets in URLs ---------------------------------------------------------------------------


SECRETS = ["us'er", "p@ss", "w'or\"d", "a'b", "c%25", "süß", "topsecret"]


TRICKY = "http://us'er:p@ss%40w'or\"d@{host}/{path}?sig=a'b&t=c%25süß&k=topsecret"


@pytest.mark.parametrize(
    "text",
    [
        TRICKY.format(host="h", path="x.jpg"),
        f"FetchFailed({TRICKY.format(host='h', path='x.jpg')!r} answered HTTP 500)",
        f"args=[{TRICKY.format(host='h', path='x.jpg')!r}] kwargs={{}}",
        json.dumps({"source": TRICKY.format(host="h", path="x.jpg")}),
    ],
)
def test_redaction_parses_instead_of_matching(text: str) -> None:
    shown = redact_text(text)
    assert "h/x.jpg" in shown
    assert not any(secret in shown for secret in SECRETS), shown
    assert not any(secret in display_url(TRICKY.format(host="h", path="x")) for secret in SECRETS)
