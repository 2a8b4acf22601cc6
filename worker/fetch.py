"""Getting a source's bytes: local files (worker.files), uploads (worker.uploads), objects in
s3://, gs:// and az:// stores (worker.objects) and SSRF-safe HTTP(S).

URL fetches resolve the host themselves, refuse non-public addresses unless allow-listed, and
connect to exactly the vetted address (TLS still checks the host name), so a DNS answer that
changes between check and connect cannot reach an internal service (core/vetted_http.py, the
webhook dispatcher's too). Every redirect hop is vetted the same way. The byte cap is enforced
while streaming, and a total deadline bounds slow-drip servers.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from core import urls
from core.addresses import IPAddress, IPNetwork, blocked_reason
from core.objects import SCHEMES as OBJECT_SCHEMES
from core.redaction import redact_text
from core.vetted_http import cut, vetted_addresses, vetted_connection
from worker.errors import FetchFailed, InvalidArguments, SourceNotAllowed, SourceNotFound, TooLarge
from worker.files import read_file, too_large
from worker.objects import read_object
from worker.settings import Settings
from worker.uploads import Uploads, is_upload

USER_AGENT = "imgqueue-worker/0.1"
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_OPAQUE_SCHEMES = frozenset({"data", "javascript", "file", "mailto", "blob", "about", "jar"})


@dataclass
class Fetched:
    """A source's bytes. They may be tens of megabytes, so the job drops them (`release`) as
    soon as it ends: a failed job's traceback can outlive it, and it holds every frame."""

    data: bytes
    kind: str  # "file", "url", "upload" or "object"
    final: str  # the path read, the URL after redirects, the upload's or object's source

    def release(self) -> None:
        self.data = b""


def fetch(
    source: str, settings: Settings, *, task_id: str = "", uploads: Uploads | None = None
) -> Fetched:
    """The source's bytes, or a documented error. `task_id`: the job's, the one upload it may
    read (`upload:<task_id>`, from `uploads`)."""
    if not isinstance(source, str) or not source:
        raise SourceNotAllowed("the source must be a non-empty string")
    if is_upload(source):
        if uploads is None:
            raise SourceNotAllowed("uploads are read by jobs only")
        return Fetched(uploads.read(source, task_id, settings.max_image_bytes), "upload", source)
    try:
        scheme = urlsplit(source).scheme.lower()
    except ValueError:
        raise InvalidArguments("the source is neither a URL nor a path") from None
    # "data:", "javascript:" ... carry no "//"; anything else with a colon may be a file name.
    if scheme and ("://" in source or scheme in _OPAQUE_SCHEMES):
        if scheme in OBJECT_SCHEMES:
            return Fetched(read_object(source, settings), "object", source)
        if scheme not in ("http", "https"):
            raise SourceNotAllowed(
                f"scheme {scheme!r} is not allowed; use http, https, s3, gs or az"
            )
        return fetch_url(source, settings)
    path, data = read_file(source, settings)
    return Fetched(data, "file", str(path))


# -- URLs ----------------------------------------------------------------------------------------


def address_blocked(ip: IPAddress, allow: Iterable[IPNetwork]) -> bool:
    """True for addresses a fetch must not reach (see core.addresses)."""
    return blocked_reason(ip, allow) is not None


def fetch_url(url: str, settings: Settings) -> Fetched:
    deadline = time.monotonic() + settings.fetch_total_timeout
    target = urls.parse(url)
    for _hop in range(settings.fetch_max_redirects + 1):
        status, location, data = _get_once(target, settings, deadline)
        if status in _REDIRECTS and location:
            try:
                url = urljoin(url, location)
            except ValueError:
                raise SourceNotAllowed("the server redirected to a malformed URL") from None
            target = urls.parse(url, redirect=True)
            continue
        return Fetched(data, "url", target.shown)
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects (FETCH_MAX_REDIRECTS)")


def _get_once(
    target: urls.SourceURL, settings: Settings, deadline: float
) -> tuple[int, str | None, bytes]:
    host, port, secure, url = target.host, target.port, target.secure, target.shown
    address = vetted_addresses(host, port, settings)[0]
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchFailed(_TOTAL_TIMEOUT, transient=True)
    conn = vetted_connection(address, port, host, secure, settings)
    # A watchdog cuts the socket at the deadline, so a server that drips its status line or
    # headers a byte at a time cannot hold the job past FETCH_TOTAL_TIMEOUT either.
    watchdog = threading.Timer(remaining, cut, args=(conn,))
    watchdog.daemon = True
    watchdog.start()
    headers = {
        "Host": target.host_header,
        "User-Agent": USER_AGENT,
        "Accept": "image/*",
        # No compression: a small gzip body must not inflate past the byte cap in one read.
        "Accept-Encoding": "identity",
    }
    closers: list[Callable[[], None]] = []
    try:
        conn.connect()
        conn.timeout = settings.fetch_read_timeout
        conn.request(
            "GET", target.target, headers=headers, preload_content=False, decode_content=False
        )
        resp = conn.getresponse()
        closers.append(resp.close)
        _check_deadline(deadline)  # the watchdog may have cut the headers short
        if resp.status in _REDIRECTS:
            location = resp.headers.get("Location")
            if not location:
                raise FetchFailed(f"{url!r} answered HTTP {resp.status} without a Location")
            return resp.status, location, b""
        _check_status(resp.status, url)
        data = _read_capped(resp, settings.max_image_bytes, deadline)
        _check_deadline(deadline)
        return resp.status, None, data
    except (FetchFailed, SourceNotFound, TooLarge):
        raise
    except ssl.SSLCertVerificationError as exc:
        raise FetchFailed(f"TLS certificate of {host!r} rejected: {exc.verify_message}") from None
    except (Urllib3Error, OSError, http.client.HTTPException) as exc:
        _check_deadline(deadline)
        raise FetchFailed(f"fetching {url!r} failed: {_short(exc)}", transient=True) from None
    finally:
        watchdog.cancel()
        for close in closers:
            close()
        conn.close()


_TOTAL_TIMEOUT = "the download took longer than FETCH_TOTAL_TIMEOUT"


def _check_deadline(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise FetchFailed(_TOTAL_TIMEOUT, transient=True)


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
        raise TooLarge(too_large(int(length), cap))
    buf = bytearray()
    while chunk := resp.read1(_CHUNK):  # read1: whatever arrived, so the deadline is checked often
        buf += chunk
        if len(buf) > cap:
            raise TooLarge(f"the download passed {cap} bytes (MAX_IMAGE_BYTES)")
        _check_deadline(deadline)
    return bytes(buf)


def _short(exc: BaseException) -> str:
    text = redact_text(str(exc))
    return text if len(text) <= 200 else text[:200] + "..."
