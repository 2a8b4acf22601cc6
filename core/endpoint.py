"""The small HTTP endpoint (/metrics, /ready, /healthz) of workers and services alike (the
webhook dispatcher, the queue exporter), bounded in every way.

One asyncio loop on one thread serves every connection, so no number of clients can take a
thread a job needs (a ThreadingHTTPServer made one thread per connection, forever, for a
client that never sent a request). A request must arrive within REQUEST_TIMEOUT and fit in
MAX_REQUEST_BYTES; at most MAX_CONNECTIONS are open, and a new one closes the oldest that has
not finished its request, so a flood of idle connections cannot keep a readiness probe out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
MAX_CONNECTIONS = 256

# path -> () -> (status, body, content type)
Route = Callable[[], tuple[int, bytes, str]]


class Endpoint:
    """Serves `routes` on addr:port from its own thread until `stop`."""

    def __init__(self, addr: str, port: int, routes: dict[str, Route]) -> None:
        self.addr, self.port, self.routes = addr, port, routes
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._reading: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()
        self._thread = threading.Thread(target=self._loop.run_forever, name="endpoint", daemon=True)

    def start(self) -> int:
        """Bind (OSError if it cannot), then serve in the background; returns the port."""
        start = asyncio.start_server(
            self._handle, self.addr, self.port, limit=MAX_REQUEST_BYTES, backlog=128
        )
        self._server = self._loop.run_until_complete(start)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._thread.start()
        return self.port

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._reading):
                writer.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._reading) >= MAX_CONNECTIONS:
            oldest, _ = self._reading.popitem(last=False)
            oldest.close()
        self._reading[writer] = None
        try:
            path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            self._reading.pop(writer, None)
            status, body, ctype = self._respond(path)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # slow, broken or oversized: dropped
        finally:
            self._reading.pop(writer, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, path: str | None) -> tuple[int, bytes, str]:
        route = self.routes.get((path or "").split("?", 1)[0])
        if route is None:
            paths = ", ".join(sorted(self.routes))
            return 404, f"not found: try {paths}\n".encode(), "text/plain; charset=utf-8"
        try:
            return route()
        except Exception:
            log.exception("endpoint %s failed", path)
            return 500, b"internal error\n", "text/plain; charset=utf-8"


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """The path of a GET, after reading (and bounding) the whole header block."""
    line = await reader.readuntil(b"\r\n")
    parts = line.decode("latin-1").split()
    size = len(line)
    while True:
        header = await reader.readuntil(b"\r\n")
        size += len(header)
        if size > MAX_REQUEST_BYTES:
            raise ValueError("request header too large")
        if header in (b"\r\n", b"\n"):
            break
    if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
        return None
    return parts[1]


_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Unavailable"}
