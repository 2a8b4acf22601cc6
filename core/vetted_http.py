"""HTTP connections under the URL policy, for the worker's fetches (worker/fetch.py) and the
webhook dispatcher's POSTs (services/webhooks/sender.py) alike.

`vetted_addresses` resolves a host itself and refuses it when any address is not allowed
(core/addresses.py; FETCH_ALLOW_NETWORKS opens ranges); `vetted_connection` connects to exactly
the address vetted (TLS still checks the certificate for the host name), so a DNS answer that
changes between check and connect cannot reach an internal service. `cut` shuts a connection's
socket from another thread: a watchdog's, at a deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

from urllib3.connection import HTTPConnection, HTTPSConnection

from core.addresses import blocked_reason
from core.job_errors import FetchFailed, SourceNotAllowed
from core.settings import UrlPolicySettings


def vetted_addresses(host: str, port: int, policy: UrlPolicySettings) -> list[str]:
    """The host's addresses, all of which must be allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        # A temporary DNS failure is worth a retry; "no such host" is not.
        transient = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
        raise FetchFailed(
            f"cannot resolve host {host!r}: {exc.strerror}", transient=transient
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for addr in addresses:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
        why = blocked_reason(ip, policy.fetch_allow_networks)
        if why is not None:
            raise SourceNotAllowed(
                f"host {host!r} resolves to {ip}, a non-public address: {why}; "
                "allow it with FETCH_ALLOW_NETWORKS"
            )
    return addresses


def vetted_connection(
    address: str, port: int, host: str, secure: bool, policy: UrlPolicySettings
) -> HTTPConnection:
    """A connection to exactly the vetted address; TLS still verifies the certificate for host."""
    if secure:
        return HTTPSConnection(
            address,
            port,
            timeout=policy.fetch_connect_timeout,
            server_hostname=host,
            assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
        )
    return HTTPConnection(address, port, timeout=policy.fetch_connect_timeout)


def cut(conn: HTTPConnection) -> None:
    """Shut the connection's socket, if open, so a read blocked on it ends at once."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
