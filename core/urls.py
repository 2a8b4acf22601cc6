"""Parsing a source URL strictly, and encoding its path and query as browsers do.

Every malformed URL is a permanent error naming the problem (InvalidArguments), never a
retried FetchFailed or an InternalError from deep inside the HTTP client: control characters,
an unparseable authority (`http://[::1/`), an empty or over-long host label (`http://a..b/`),
a bad port. Non-ASCII and spaces in the path and query are percent-encoded as UTF-8, as the
WHATWG URL standard does; `%` escapes already present are kept.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from core.contract import CONTROL_CHARS as _CONTROL  # the contract's, redirects' too
from core.job_errors import InvalidArguments, SourceNotAllowed
from core.redaction import display_url

_HOST_CHARS = re.compile(r"^[a-z0-9_-]+$")
# WHATWG: the path percent-encode set is C0 controls, space, " # < > ? ` { } and non-ASCII.
_PATH_SAFE = (
    "!$%&'()*+,-./0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_abcdefghijklmnopqrstuvwxyz|~"
)
# The query percent-encode set is C0 controls, space, " # < > and non-ASCII (and ' for http).
_QUERY_SAFE = _PATH_SAFE + "?`{}/"


@dataclass(frozen=True)
class SourceURL:
    """A parsed http(s) URL, ready to request."""

    scheme: str  # "http" or "https"
    host: str  # ASCII: an IDNA-encoded name, or an IP address without brackets
    port: int
    target: str  # encoded path and query, what goes on the request line
    host_header: str
    shown: str  # for logs and errors: no userinfo, no query

    @property
    def secure(self) -> bool:
        return self.scheme == "https"


def parse(url: str, *, redirect: bool = False) -> SourceURL:
    """Parse an http(s) URL or raise a permanent, named error.

    `redirect`: the URL came from a Location header, so its faults are the server's
    (SourceNotAllowed), not the caller's (InvalidArguments).
    """
    error = SourceNotAllowed if redirect else InvalidArguments
    where = "the redirect target" if redirect else "the source"
    shown = display_url(url)
    if _CONTROL.search(url):
        raise error(f"{where} contains control characters: {shown!r}")
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        hostname = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise error(f"{where} is not a valid URL ({exc}): {shown!r}") from None
    if scheme not in ("http", "https"):
        if redirect:
            raise SourceNotAllowed(f"redirect to a forbidden scheme {scheme!r}")
        raise SourceNotAllowed(f"scheme {scheme!r} is not allowed; use http or https")
    if not hostname:
        raise error(f"{where} has no host: {shown!r}")
    host = _host(hostname, "[" in parts.netloc, error, where)
    if port is None:
        port = 443 if scheme == "https" else 80
    elif not 1 <= port <= 65535:
        raise error(f"{where} has an invalid port: {shown!r}")
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_QUERY_SAFE)
    target = path + (f"?{query}" if query else "")
    default = (scheme, port) in (("http", 80), ("https", 443))
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if default else f"{bracketed}:{port}"
    return SourceURL(scheme, host, port, target, host_header, shown)


def _host(hostname: str, literal: bool, error: type[Exception], where: str) -> str:
    if literal:
        try:
            return str(ipaddress.IPv6Address(hostname.split("%", 1)[0]))
        except ValueError:
            raise error(f"{where} has an invalid IPv6 address: {hostname[:80]!r}") from None
    try:
        return str(ipaddress.IPv4Address(hostname))
    except ValueError:
        pass
    name = hostname.rstrip(".")
    try:
        encoded = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise error(f"{where} has an invalid host name {hostname[:80]!r}: {exc}") from None
    labels = encoded.split(".")
    if len(encoded) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise error(f"{where} has an invalid host name: {hostname[:80]!r}")
    if not all(_HOST_CHARS.match(label) for label in labels):
        raise error(f"{where} has characters a host name cannot hold: {hostname[:80]!r}")
    return encoded
