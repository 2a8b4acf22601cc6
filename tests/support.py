"""Real parts for the tests: a private redis-server, celery worker processes, an HTTP server."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll until predicate() is truthy or the deadline passes (then fail saying what)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def imgqueue(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI (`python -m producer ARGS`) against `redis_url`, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def held_messages(client: redis.Redis, prefix: str = "") -> list[Any]:
    """Every message some consumer holds: popped into an inbox, or claimed and unacknowledged."""
    out: list[Any] = []
    for key in client.scan_iter(f"{prefix}imgqueue:inbox:*"):
        out.extend(client.lrange(key, 0, -1))
    for key in client.scan_iter(f"{prefix}imgqueue:unacked:*"):
        out.extend(client.hvals(key))
    return out


def queued_messages(client: redis.Redis, queues: list[str], prefix: str = "") -> list[Any]:
    """Every message waiting in the queues' lists, every priority."""
    from producer.contract import PRIORITY_STEPS, queue_list

    out: list[Any] = []
    for queue in queues:
        for priority in PRIORITY_STEPS:
            out.extend(client.lrange(prefix + queue_list(queue, priority), 0, -1))
    return out


class RedisServer:
    """A private redis-server on a free port; can be stopped and restarted on the same port."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra: list[str] | None = None,
        password: str | None = None,
        config: Path | None = None,
    ):
        """`config`: a redis.conf to start from (the command line overrides port, dir, ...)."""
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra or []
        self.password = password
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                *([str(self.config)] if self.config else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, f"redis-server on port {self.port}")
        client.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def fake_old_redis(version: str = "6.0.16") -> Iterator[int]:
    """A loopback TCP server speaking just enough RESP to pass for an old Redis: HELLO (RESP3,
    as redis-py 8 asks), PING, INFO, CLIENT and SELECT answer; anything else is an error.
    Yields its port."""

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                line = reader.readline()
                if not line:
                    return
                if not line.startswith(b"*"):
                    continue
                parts = []
                for _ in range(int(line[1:])):
                    size = int(reader.readline()[1:])
                    parts.append(reader.read(size + 2)[:-2].upper())
                command = parts[0] if parts else b""
                if command == b"HELLO":
                    reply = b"%1\r\n+proto\r\n:3\r\n"
                elif command == b"PING":
                    reply = b"+PONG\r\n"
                elif command == b"INFO":
                    body = f"# Server\r\nredis_version:{version}\r\n".encode()
                    reply = b"$%d\r\n%s\r\n" % (len(body), body)
                elif command in (b"CLIENT", b"SELECT"):
                    reply = b"+OK\r\n"
                else:
                    reply = b"-ERR not a real Redis\r\n"
                conn.sendall(reply)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        listener.close()


class SentinelCluster:
    """A master, a replica and one sentinel (`redis-server --sentinel`), on loopback ports."""

    master_name = "mymaster"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master = RedisServer(workdir / "master").start()
        self.replica = RedisServer(
            workdir / "replica", extra=["--replicaof", "127.0.0.1", str(self.master.port)]
        ).start()
        self.port = free_port()
        conf = workdir / "sentinel" / "sentinel.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {conf.parent}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
            f"sentinel failover-timeout {self.master_name} 5000\n"
        )
        exe = shutil.which("redis-server") or "redis-server"
        self.sentinel = subprocess.Popen(
            [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.admin = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=2)
        wait_for(self._ready, 30, "the sentinel to see the master and its replica", 0.2)

    def _ready(self) -> bool:
        try:
            replicas = self.admin.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "REPLICAS", self.master_name
            )
        except redis.RedisError:
            return False
        link = redis.Redis(port=self.replica.port).info("replication")
        return bool(replicas) and link.get("master_link_status") == "up"

    def url(self, db: int = 0) -> str:
        return f"sentinel://127.0.0.1:{self.port}/{db}"

    def master_port(self) -> int:
        _, port = self.admin.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return int(port)

    def stop(self) -> None:
        self.sentinel.terminate()
        self.sentinel.wait(10)
        self.admin.close()
        self.replica.stop()
        self.master.stop()


class WorkerProcess:
    """One real `celery -A <app> worker` process (the project's `worker` app), logging to a file.

    `root` is the source tree it runs from (another checkout, for A/B benchmarks).
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        name: str,
        extra_args: list[str] | None = None,
        app: str = "worker",
        root: Path = ROOT,
    ):
        self.log_path = log_path
        self.name = name
        self._log = log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-l",
            "INFO",
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            *(extra_args or []),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> WorkerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            return " ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} to be ready", interval=0.1)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class WorkerFactory:
    """Starts workers with a base environment; stops them all at teardown."""

    def __init__(self, base_env: dict[str, str], log_dir: Path):
        self.base_env = base_env
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def start(
        self, wait: bool = True, extra_args: list[str] | None = None, **env: str
    ) -> WorkerProcess:
        full = {**self.base_env, **env}
        name = f"w{len(self.workers)}-{os.getpid()}"
        worker = WorkerProcess(full, self.log_dir / f"{name}.log", name, extra_args)
        self.workers.append(worker)
        return worker.wait_ready() if wait else worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()


# -- a real HTTP server on loopback ----------------------------------------------------------


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
