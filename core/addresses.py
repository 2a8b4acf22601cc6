"""Which IP addresses a URL fetch may reach: IANA's special-purpose registries, spelled out.

Python's `is_global` changed between patch releases (3.11.7 calls 6to4, IPv4-compatible,
site-local and local-use NAT64 addresses public), so the policy is our own table: every entry
of the IPv4 and IPv6 Special-Purpose Address Registries (iana.org/assignments/
iana-ipv4-special-registry and iana-ipv6-special-registry), multicast, and for IPv6 anything
outside global unicast (2000::/3). An address that embeds an IPv4 address (mapped, compatible,
translated, NAT64, 6to4, Teredo) is also judged by the IPv4 address it carries, so allowing an
IPv6 range (say, a NAT64 prefix) never opens the internal addresses behind it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = [
    ("0.0.0.0/8", "'this network'"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.31.196.0/24", "AS112-v4"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "direct delegation AS112"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
]
_V6 = [
    ("::/8", "reserved (unspecified, loopback, IPv4-compatible, IPv4-mapped)"),
    ("64:ff9b::/96", "IPv4/IPv6 translation (NAT64)"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy prefix"),
    ("2001::/23", "IETF protocol assignments (Teredo, benchmarking, ORCHID ...)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("2620:4f:8000::/48", "direct delegation AS112"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
]
SPECIAL: list[tuple[IPNetwork, str]] = [
    (ipaddress.ip_network(net), why) for net, why in (*_V4, *_V6)
]
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the standard forms, or None."""
    if ip.version == 4:
        return None
    value = int(ip)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64[0] or ip in _NAT64[1]:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _COMPATIBLE and value > 1:  # not :: or ::1
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:  # 2002:AABB:CCDD::/48
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    if ip in _TEREDO:  # the client's address, obfuscated, in the low 32 bits
        return ipaddress.IPv4Address((value & 0xFFFFFFFF) ^ 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress, allow: Iterable[IPNetwork] = ()) -> str | None:
    """Why a fetch must not connect to `ip`, or None when it may.

    `allow` (FETCH_ALLOW_NETWORKS) opens ranges; an embedded IPv4 address is judged too.
    """
    allow = tuple(allow)
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = blocked_reason(inner, allow)
        if why is not None:
            return f"it carries {inner}, {why}"
        if (ip in _MAPPED or ip in _TRANSLATED) and _listed(inner, allow):
            return None  # another spelling of an IPv4 address the operator allowed
    if _listed(ip, allow):
        return None
    for net, why in SPECIAL:
        if ip.version == net.version and ip in net:
            return f"{why} ({net})"
    if ip.version == 6 and ip not in _GLOBAL_UNICAST:
        return "not global unicast (outside 2000::/3)"
    return None


def _listed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)
