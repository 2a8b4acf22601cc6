"""Private Redis servers on loopback: a plain redis-server, a sentinel setup, and a fake
old Redis that only answers the handshake."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.tcp import tcp_server
from tests.support.waiting import wait_for


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

    @contextlib.contextmanager
    def scratch(self, db: int, *, decode_responses: bool = False) -> Iterator[redis.Redis]:
        """A client on database `db`, emptied before and after: a test's own database."""
        client = redis.Redis.from_url(self.url(db), decode_responses=decode_responses)
        client.flushdb()
        try:
            yield client
        finally:
            client.flushdb()
            client.close()

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


def with_shipped_users(workdir: Path) -> RedisServer:
    """A started redis-server with exactly the `user` lines of deploy/redis.conf (the rest of
    that file points at /data), so tests hold the shipped ACLs to what each role may do."""
    shipped = (ROOT / "deploy" / "redis.conf").read_text().splitlines()
    workdir.mkdir(parents=True, exist_ok=True)
    users = workdir / "users.conf"
    users.write_text("\n".join(line for line in shipped if line.startswith("user ")) + "\n")
    return RedisServer(workdir / "acl", config=users).start()


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

    with tcp_server(serve) as port:
        yield port


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
