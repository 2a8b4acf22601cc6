"""A real HTTP server on loopback: files from a directory plus routes that misbehave."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ImageHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `directory`, plus test routes:

    /status/<code>           answers that status with an empty body
    /redirect?to=<url>       302 to the given URL
    /drip?bytes=N&delay=S    sends N bytes one at a time, S seconds apart
    /lie/<file>              serves a file with a Content-Length smaller than the body
    /flaky/<n>/<file>        answers 503 for the first n requests of that path, then the file
    /hang?s=S                accepts, then says nothing for S seconds
    /reset                   closes the connection without answering
    /gzip?mb=N               N MiB of zeros, gzip-compressed, with Content-Encoding: gzip
    /drip-headers?delay=S    sends the status line, then headers one byte every S seconds
    /loop                    redirects to itself, forever

    Every request is counted in `counters` under "hits:<path>".
    """

    directory: Path
    counters: dict[str, int]
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        parts = [urllib.parse.unquote(p) for p in parsed.path.split("/") if p]
        with self.lock:
            key = "hits:" + self.path
            self.counters[key] = self.counters.get(key, 0) + 1
        if parts[:1] == ["hang"]:
            time.sleep(float(query.get("s", ["5"])[0]))
        elif parts[:1] == ["reset"]:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif parts[:1] == ["gzip"]:
            body = gzip.compress(b"\0" * (int(query["mb"][0]) << 20))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif parts[:1] == ["drip-headers"]:
            delay = float(query["delay"][0])
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for byte in b"X-Slow: " + b"a" * 200:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(delay)
        elif parts[:1] == ["loop"]:
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts[:1] == ["status"]:
            self._send(int(parts[1]), b"")
        elif parts[:1] == ["redirect"]:
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts[:1] == ["drip"]:
            n, delay = int(query["bytes"][0]), float(query["delay"][0])
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(n):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(delay)
        elif parts[:1] == ["flaky"]:
            with self.lock:
                count = self.counters.get(self.path, 0)
                self.counters[self.path] = count + 1
            if count < int(parts[1]):
                self._send(503, b"try later")
            else:
                self._file("/".join(parts[2:]))
        elif parts[:1] == ["lie"]:
            self._file("/".join(parts[1:]), lie=True)
        else:
            self._file("/".join(parts))

    def _file(self, rel: str, lie: bool = False) -> None:
        path = (self.directory / rel).resolve()
        if not path.is_file() or self.directory.resolve() not in path.parents:
            self._send(404, b"not found")
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if not lie:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(data)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(directory: Path, counters: dict[str, int] | None = None) -> Iterator[str]:
    counts = {} if counters is None else counters
    handler = type("Handler", (ImageHandler,), {"directory": directory, "counters": counts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
