"""The webhook dispatcher's POSTs: keep-alive connections, each to exactly a vetted address.

A `Sender` is shared by the dispatcher's threads. It keeps idle connections per receiver
(scheme, host, port), at most WEBHOOK_CONCURRENCY each, so a busy receiver costs one TCP (and
TLS) handshake per thread, not one per delivery. The fetch policy holds as for the worker's
fetches (core/vetted_http.py): a new connection resolves the host, refuses it when any address
is not allowed, and connects to exactly the address it vetted (TLS verifies the certificate for
the host name); a kept connection goes on reaching that same vetted address, whatever DNS
answers later, so keeping it opens nothing new. Connections idle longer than IDLE_SECONDS, or
closed by the receiver, are dropped; a kept connection the receiver closed just as it was
reused is tried once more on a new one.

One watchdog thread cuts an attempt's socket at its deadline (WEBHOOK_TIMEOUT), so a receiver
that drips its answer a byte at a time holds a thread no longer than that.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from urllib3.connection import HTTPConnection
from urllib3.exceptions import HTTPError as Urllib3Error

from core import urls
from core.job_errors import FetchFailed, SourceNotAllowed
from core.redaction import redact_error
from core.settings import UrlPolicySettings
from core.vetted_http import cut, vetted_addresses, vetted_connection

# Below the keep-alive timeout of common servers (Node.js, uvicorn: 5 s), so a kept connection
# is rarely one the receiver is closing.
IDLE_SECONDS = 4.0
DRAIN_BYTES = 64 * 1024  # an answer's body read to keep its connection; a longer one closes it
# A kept connection that fails with one of these before any answer was closed by the receiver
# while idle: the POST is made once more on a new connection.
_STALE = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


@dataclass(frozen=True)
class Answer:
    """What one POST got: the status, or an error (`refused`: by the fetch policy)."""

    status: int | None = None
    error: str = ""
    refused: bool = False
    timed_out: bool = False


class Watchdog:
    """One thread that cuts a connection's socket at its deadline unless disarmed first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, HTTPConnection] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, conn: HTTPConnection) -> int:
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = conn
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="webhook-watchdog", daemon=True
                )
                self._thread.start()
            if self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        """After this returns the connection is never cut for this arming."""
        with self._cond:
            self._armed.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed: forget it
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                conn = self._armed.pop(token, None)
                if conn is not None:
                    cut(conn)


_Key = tuple[str, str, int]


class Sender:
    """POSTs over kept connections (module doc). Thread-safe."""

    def __init__(
        self,
        policy: UrlPolicySettings,
        per_host: int,
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        """`policy`: FETCH_ALLOW_NETWORKS and FETCH_CONNECT_TIMEOUT; `on_connect`: called for
        each new connection (a metric: reuse shows as few)."""
        self.policy = policy
        self.per_host = per_host
        self.on_connect = on_connect
        self.watchdog = Watchdog()
        self._idle: dict[_Key, list[tuple[float, HTTPConnection]]] = {}
        self._lock = threading.Lock()

    def post(
        self, target: urls.SourceURL, body: bytes, headers: dict[str, str], timeout: float
    ) -> Answer:
        """POST `body` to `target` within `timeout` seconds; never raises for what the
        receiver or the network does."""
        deadline = time.monotonic() + timeout
        key = (target.scheme, target.host, target.port)
        conn = self._take(key)
        reused = conn is not None
        while True:
            if conn is None:
                try:
                    conn = self._connect(target)
                except SourceNotAllowed as exc:
                    return Answer(error=f"refused: {exc}", refused=True)
                except FetchFailed as exc:
                    return Answer(error=str(exc))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                conn.close()
                return Answer(timed_out=True)
            token = self.watchdog.arm(deadline, conn)
            answered = False
            try:
                if conn.sock is None:
                    conn.connect()
                conn.timeout = remaining
                if conn.sock is not None:
                    conn.sock.settimeout(remaining)
                conn.request(
                    "POST",
                    target.target,
                    body=body,
                    headers=headers,
                    preload_content=False,
                    decode_content=False,
                )
                response = conn.getresponse()
                answered = True
                status = response.status
                data = response.read(DRAIN_BYTES + 1)
                keep = len(data) <= DRAIN_BYTES and conn.sock is not None
                response.close()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                return Answer(error=f"TLS certificate rejected: {exc.verify_message}")
            except (Urllib3Error, OSError, http.client.HTTPException) as exc:
                conn.close()
                late = time.monotonic() >= deadline - 0.01
                if reused and not answered and not late and isinstance(exc, _STALE):
                    conn, reused = None, False  # the receiver closed it while idle
                    continue
                if late:
                    return Answer(timed_out=True)
                return Answer(error=f"POST failed: {redact_error(exc)}")
            finally:
                self.watchdog.disarm(token)
            if keep:
                self._give(key, conn)
            else:
                conn.close()
            return Answer(status)

    def _connect(self, target: urls.SourceURL) -> HTTPConnection:
        address = vetted_addresses(target.host, target.port, self.policy)[0]
        self.on_connect()
        return vetted_connection(address, target.port, target.host, target.secure, self.policy)

    def _take(self, key: _Key) -> HTTPConnection | None:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                since, conn = idle.pop()
            # A receiver that closed it (or sent anything unasked) makes it readable.
            if now - since < IDLE_SECONDS and conn.is_connected:
                return conn
            conn.close()

    def _give(self, key: _Key, conn: HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.per_host:
                idle.append((time.monotonic(), conn))
                return
        conn.close()

    def prune(self) -> None:
        """Close connections idle past IDLE_SECONDS (the dispatcher calls it now and then)."""
        cutoff = time.monotonic() - IDLE_SECONDS
        stale: list[HTTPConnection] = []
        with self._lock:
            for key, idle in list(self._idle.items()):
                keep = [(t, c) for t, c in idle if t >= cutoff]
                stale += [c for t, c in idle if t < cutoff]
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for conn in stale:
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for _, conn in conns:
                conn.close()
