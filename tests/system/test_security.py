"""Security settings on real workers: pickled messages refused, passwords in REDIS_URL, TLS
(rediss://), Redis users that give producers no way to forge results, no secrets in logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from core.deadletters import DeadLetters
from core.errors import BrokerUnavailable
from producer import Client, JobFailed
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, with_shipped_users
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory


def test_pickled_messages_are_refused_not_run(
    workers: WorkerFactory, client: Client, redis_url: str
) -> None:
    worker = workers.start(MODEL="sleep:5ms")
    evil = Celery("evil", broker=redis_url, set_as_current=False)
    evil.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    try:
        pickled = evil.send_task("classify", args=["cat.jpg"]).id
    finally:
        evil.close()
    # Refused by the transport before Celery sees it: dead-lettered, never deserialized.
    wait_for(lambda: "is not accepted (JSON only)" in worker.log(), 30, "the refusal")
    assert client.result(client.submit("cat.jpg"), timeout=60)["source"] == "cat.jpg"
    assert client.status(pickled).state == "PENDING"  # never deserialized, never run
    letters = DeadLetters(client.redis, client.config).read()
    assert [(e.reason, pickled in e.message.decode()) for e in letters] == [("bad-body", True)]
    assert worker.alive()


def test_password_in_redis_url_works_and_never_reaches_the_logs(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    secret = "pw-" + uuid.uuid4().hex
    server = RedisServer(tmp_path / "redis", password=secret).start()
    factory = WorkerFactory(
        {**worker_env, "REDIS_URL": server.url(), "MODEL": "sleep:5ms"}, tmp_path
    )
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()  # the server really demands it
        worker = factory.start(extra_args=["-l", "DEBUG"])
        with Client(server.url()) as client:
            assert client.result(client.submit("cat.jpg"), timeout=60)["source"] == "cat.jpg"
            with pytest.raises(JobFailed):
                client.result(client.submit("missing.jpg"), timeout=60)
        factory.stop_all()
        log = worker.log()
        assert ":**@127.0.0.1" in log  # the URL is shown, masked
        assert secret not in log
    finally:
        factory.stop_all()
        server.stop()
    # The producer's errors name the server, not the password.
    with (
        Client(f"redis://:{secret}@127.0.0.1:{free_port()}/0") as down,
        pytest.raises(BrokerUnavailable) as info,
    ):
        down.status("x")
    assert secret not in str(info.value)
    assert ":***@" in str(info.value)


def _make_certs(directory: Path) -> dict[str, Path]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=imgqueue test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    return {name: directory / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = _make_certs(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certs["server.crt"]),
            "--tls-key-file",
            str(certs["server.key"]),
            "--tls-ca-cert-file",
            str(certs["ca.crt"]),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    query = f"ssl_cert_reqs=required&ssl_ca_certs={certs['ca.crt']}"
    url = f"rediss://127.0.0.1:{port}/0?{query}"
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5)

    def up() -> bool:
        try:
            return bool(probe.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(up, 10, "redis-server with TLS")
        yield url, certs["ca.crt"]
    finally:
        probe.close()
        proc.terminate()
        proc.wait(10)


def test_rediss_url_with_certificate_checks(
    tls_redis: tuple[str, Path], worker_env: dict[str, str], tmp_path: Path
) -> None:
    url, _ = tls_redis
    factory = WorkerFactory({**worker_env, "REDIS_URL": url, "MODEL": "sleep:5ms"}, tmp_path)
    try:
        factory.start()
        with Client(url) as client:
            assert client.result(client.submit("cat.jpg"), timeout=60)["source"] == "cat.jpg"
    finally:
        factory.stop_all()
    # Certificate checks are on: without the CA the server is not trusted.
    plain = url.split("?", 1)[0] + "?ssl_cert_reqs=required"
    with Client(plain) as untrusting, pytest.raises(BrokerUnavailable):
        untrusting.status("x")


def test_redis_users_give_producers_no_way_to_forge_results(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """deploy/redis.conf's ACL users on a real Redis: the worker runs jobs, the producer submits
    and reads, and cannot write a result, a cache entry or the delivery layer's keys."""
    from core.contract import result_key

    server = with_shipped_users(tmp_path)
    base = f"127.0.0.1:{server.port}/0"
    factory = WorkerFactory(
        {
            **worker_env,
            "REDIS_URL": f"redis://worker:imgqueue-worker-dev@{base}",
            "MODEL": "sleep:5ms",
        },
        tmp_path,
    )
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, username="producer", password="wrong").ping()
        assert redis.Redis(port=server.port).ping()  # the default user: health checks only
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis(port=server.port).get("celery-task-meta-x")
        factory.start()
        with Client(f"redis://producer:imgqueue-producer-dev@{base}") as producer:
            task_id = producer.submit("cat.jpg", top_k=1, priority=5)
            assert producer.result(task_id, timeout=60)["source"] == "cat.jpg"
            r = producer.redis
            forged = json.dumps({"status": "SUCCESS", "result": {"predictions": []}})
            for attempt in (
                lambda: r.set(result_key(task_id), forged),
                lambda: r.set(result_key("another-job"), forged),
                lambda: r.set("imgqueue:result-cache:" + "0" * 64, "{}"),
                lambda: r.set(f"imgqueue-deliveries-{task_id}-0", 99),
                lambda: r.hset("imgqueue:unacked:someone", "tag", "x"),
                lambda: r.zadd("imgqueue:consumers", {"fake": 1.0}),
                lambda: r.delete("celery"),
                lambda: r.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v"),
                lambda: r.publish("celery-task-meta-x", forged),
                lambda: r.flushdb(),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()
            assert json.loads(r.get(result_key(task_id)) or b"{}")["status"] == "SUCCESS"
            # It may listen on result channels (Client.wait's wake-up), and only those.
            listener = r.pubsub()
            listener.subscribe(result_key("another-job"))
            assert (listener.get_message(timeout=5) or {}).get("type") == "subscribe"
            listener.subscribe("imgqueue:anything")
            with pytest.raises(redis.exceptions.NoPermissionError):
                listener.get_message(timeout=5)
            listener.close()
        admin = redis.Redis(port=server.port, username="admin", password="imgqueue-admin-dev")
        assert admin.keys("imgqueue:consumers")  # operators see everything
    finally:
        factory.stop_all()
        server.stop()
