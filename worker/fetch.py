"""Getting a source's bytes: local files confined to IMAGE_ROOT, and SSRF-safe HTTP(S).

URL fetches resolve the host themselves, refuse non-public addresses unless allow-listed, and
connect to exactly the vetted address (TLS still checks the host name), so a DNS answer that
changes between check and connect cannot reach an internal service. Every redirect hop is
vetted the same way. The byte cap is enforced while streaming, and a total deadline bounds
slow-drip servers.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from worker.errors import FetchFailed, SourceNotAllowed, SourceNotFound, TooLarge
from worker.settings import IPNetwork, Settings

USER_AGENT = "imgqueue-worker/0.1"
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Fetched:
    data: bytes
    kind: str  # "file" or "url"
    final: str  # the path read, or the URL after redirects


def fetch(source: str, settings: Settings) -> Fetched:
    """The source's bytes, or a documented error."""
    if not isinstance(source, str) or not source:
        raise SourceNotAllowed("the source must be a non-empty string")
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme:
        if scheme not in ("http", "https"):
            raise SourceNotAllowed(f"scheme {scheme!r} is not allowed; use http or https")
        return fetch_url(source, settings)
    return read_file(source, settings)


# -- local files ---------------------------------------------------------------------------------


def resolve_path(source: str, root: Path | None) -> Path:
    """The real path of `source` (absolute, or relative to IMAGE_ROOT), if it lies inside root."""
    if root is None:
        raise SourceNotAllowed("local paths are disabled on this worker (IMAGE_ROOT is not set)")
    if "\x00" in source:
        raise SourceNotAllowed("the path contains a NUL byte")
    real_root = os.path.realpath(root)
    candidate = os.path.join(real_root, source)  # an absolute source replaces the root
    real = os.path.realpath(candidate)
    # commonpath, not startswith: /data/img2 must not pass as inside /data/img.
    if os.path.commonpath([real, real_root]) != real_root:
        raise SourceNotAllowed(f"{source!r} is outside IMAGE_ROOT")
    return Path(real)


def read_file(source: str, settings: Settings) -> Fetched:
    path = resolve_path(source, settings.image_root)
    try:
        # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: the final component was resolved
        # above, so a symlink appearing there now is a race and refused.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SourceNotFound(f"no such file: {source!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceNotAllowed(f"{source!r} changed into a symlink while opening") from None
        if exc.errno == errno.EISDIR:
            raise SourceNotAllowed(f"{source!r} is a directory, not a file") from None
        raise SourceNotFound(f"cannot open {source!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SourceNotAllowed(f"{source!r} is {kind}")
        if info.st_size > settings.max_image_bytes:
            raise TooLarge(_too_large(info.st_size, settings.max_image_bytes))
        data = f.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise TooLarge(_too_large(len(data), settings.max_image_bytes))
    return Fetched(data, "file", str(path))


def _too_large(size: int, cap: int) -> str:
    return f"the image is {size} bytes, over the limit of {cap} (MAX_IMAGE_BYTES)"


# -- URLs ----------------------------------------------------------------------------------------


def address_blocked(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: Iterable[IPNetwork]
) -> bool:
    """True for addresses a fetch must not reach: anything not globally routable."""
    allow = tuple(allow)
    if any(ip.version == net.version and ip in net for net in allow):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None:
            return address_blocked(embedded, allow)
    if ip.version == 4 and ip in _CGNAT:
        return True
    return not ip.is_global or ip.is_multicast


def vetted_addresses(host: str, port: int, settings: Settings) -> list[str]:
    """The host's addresses, all of which must be allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchFailed(f"cannot resolve host {host!r}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for addr in addresses:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
        if address_blocked(ip, settings.fetch_allow_networks):
            raise SourceNotAllowed(
                f"host {host!r} resolves to {ip}, a non-public address; "
                "allow it with FETCH_ALLOW_NETWORKS"
            )
    return addresses


def fetch_url(url: str, settings: Settings) -> Fetched:
    deadline = time.monotonic() + settings.fetch_total_timeout
    for _hop in range(settings.fetch_max_redirects + 1):
        status, location, data = _get_once(url, settings, deadline)
        if status in _REDIRECTS and location:
            url = urljoin(url, location)
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise SourceNotAllowed(f"redirect to a forbidden scheme: {url!r}")
            continue
        return Fetched(data, "url", url)
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects (FETCH_MAX_REDIRECTS)")


def _get_once(url: str, settings: Settings, deadline: float) -> tuple[int, str | None, bytes]:
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise SourceNotAllowed(f"URL has no host: {url!r}")
    secure = parts.scheme.lower() == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise SourceNotAllowed(f"URL has an invalid port: {url!r}") from None
    address = vetted_addresses(host, port, settings)[0]
    timeout = urllib3.Timeout(
        connect=settings.fetch_connect_timeout, read=settings.fetch_read_timeout
    )
    pool: urllib3.HTTPConnectionPool
    if secure:
        pool = urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            server_hostname=host,
            assert_hostname=host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False, maxsize=1)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {
        "Host": parts.netloc.rsplit("@", 1)[-1],
        "User-Agent": USER_AGENT,
        "Accept": "image/*",
    }
    try:
        with pool:
            resp = pool.urlopen(
                "GET", path, headers=headers, redirect=False, preload_content=False, retries=False
            )
            try:
                if resp.status in _REDIRECTS:
                    return resp.status, resp.headers.get("Location"), b""
                _check_status(resp.status, url)
                return resp.status, None, _read_capped(resp, settings.max_image_bytes, deadline)
            finally:
                resp.release_conn()
    except (FetchFailed, SourceNotFound, TooLarge):
        raise
    except (Urllib3Error, OSError) as exc:
        raise FetchFailed(f"fetching {url!r} failed: {_short(exc)}", transient=True) from None


def _check_status(status: int, url: str) -> None:
    if status in (404, 410):
        raise SourceNotFound(f"{url!r} answered HTTP {status}")
    if status == 429 or status >= 500:
        raise FetchFailed(f"{url!r} answered HTTP {status}", transient=True)
    if status >= 400:
        raise FetchFailed(f"{url!r} answered HTTP {status}")


def _read_capped(resp: urllib3.BaseHTTPResponse, cap: int, deadline: float) -> bytes:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > cap:
        raise TooLarge(_too_large(int(length), cap))
    buf = bytearray()
    while chunk := resp.read1(_CHUNK):  # read1: whatever arrived, so the deadline is checked often
        buf += chunk
        if len(buf) > cap:
            raise TooLarge(f"the download passed {cap} bytes (MAX_IMAGE_BYTES)")
        if time.monotonic() > deadline:
            raise FetchFailed("the download took longer than FETCH_TOTAL_TIMEOUT", transient=True)
    return bytes(buf)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
