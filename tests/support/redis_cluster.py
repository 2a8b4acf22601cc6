"""A real Redis Cluster on loopback for the tests: six `redis-server --cluster-enabled yes`
processes (three masters, a replica each), made a cluster by `redis-cli --cluster create`."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from functools import partial
from pathlib import Path

import redis

from tests.support.waiting import wait_for

# A node's cluster bus listens on its port + 10000: both must be free, and below 65536.
_BUS_OFFSET = 10000
_MAX_PORT = 65535 - _BUS_OFFSET


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port below 55536 whose bus port (+10000) is free too."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > _MAX_PORT:
            # Ephemeral ports sit high: fold into the range below 55536.
            port = 20000 + port % (_MAX_PORT - 20000)
        ports = {port, port + _BUS_OFFSET}
        if ports & taken or not all(_bindable(p) for p in ports):
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _admin(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=5)


class RedisClusterNodes:
    """`masters` masters with `replicas` replicas each, on loopback; `stop()` ends them all.

    `node_timeout_ms` is the cluster's `cluster-node-timeout`: a master silent that long is
    failed over to its replica (election takes about a second more).
    """

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 3000,
        extra: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.count = masters * (1 + replicas)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra = extra or []
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> RedisClusterNodes:
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
        try:
            taken: set[int] = set()
            for _ in range(self.count):
                port = free_cluster_port(taken)
                taken |= {port, port + _BUS_OFFSET}
                self.ports.append(port)
                self._start_node(exe, port)
            for port in self.ports:
                wait_for(partial(_pings, port), 20, f"cluster node on port {port}")
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout!r}")
            wait_for(self.healthy, 60, "the cluster to be ok on every node", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, exe: str, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--dir",
                str(node_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, scheme: str = "redis-cluster") -> str:
        """All nodes, as RESULT_URL takes them (any one would do: the rest are discovered)."""
        return f"{scheme}://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as a live node sees it: id, port, role flags, master id, link state."""
        for port in self.live_ports():
            with contextlib.suppress(redis.RedisError), _admin(port) as client:
                raw = client.execute_command("CLUSTER", "NODES")
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                out = []
                for line in text.strip().splitlines():
                    fields = line.split()
                    out.append(
                        {
                            "id": fields[0],
                            "port": fields[1].split("@")[0].rsplit(":", 1)[1],
                            "flags": fields[2],
                            "master": fields[3],
                            "link": fields[7],
                        }
                    )
                return out
        raise RuntimeError("no cluster node answers")

    def master_ports(self) -> list[int]:
        return sorted(
            int(n["port"])
            for n in self.nodes()
            if "master" in n["flags"].split(",") and "fail" not in n["flags"]
        )

    def replica_of(self, master_port: int) -> int:
        nodes = self.nodes()
        master_id = next(n["id"] for n in nodes if int(n["port"]) == master_port)
        return next(int(n["port"]) for n in nodes if n["master"] == master_id)

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and knows every live node; replicas synced."""
        live = self.live_ports()
        for port in live:
            try:
                with _admin(port) as client:
                    info = client.cluster("INFO")
                    replication = client.info("replication")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
            ):
                return False
        return True

    def kill(self, port: int) -> None:
        """SIGKILL one node (no chance to hand anything over)."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a stopped node again, with its nodes.conf: a former master rejoins as a
        replica of the node that took over from it."""
        exe = shutil.which("redis-server") or "redis-server"
        self._start_node(exe, port)
        wait_for(partial(_pings, port), 20, f"cluster node on port {port}")
        wait_for(self.healthy, 60, "the cluster to be ok again on every node", interval=0.1)

    def kill_master(self, port: int) -> int:
        """SIGKILL a master; returns the port of its replica (which should take over)."""
        replica = self.replica_of(port)
        self.kill(port)
        return replica

    def wait_failover(self, replica: int, timeout: float = 60) -> float:
        """Wait until `replica` is a master and every live node says the cluster is ok;
        returns the seconds it took."""
        started = time.monotonic()

        def promoted() -> bool:
            try:
                return replica in self.master_ports() and self._live_nodes_ok()
            except RuntimeError:
                return False

        wait_for(promoted, timeout, f"node {replica} to take over as a master", 0.1)
        return time.monotonic() - started

    def _live_nodes_ok(self) -> bool:
        for port in self.live_ports():
            try:
                with _admin(port) as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
            except redis.RedisError:
                return False
        return True

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for port, proc in self.procs.items():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self.procs[port].kill()
                proc.wait(10)


def _pings(port: int) -> bool:
    try:
        with _admin(port) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False
