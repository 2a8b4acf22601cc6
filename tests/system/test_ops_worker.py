"""Operations against a real worker: readiness, Prometheus scrape, job log, ping, events, cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from producer import Client, JobFailed
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory, WorkerProcess


@pytest.fixture(scope="module")
def ops_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    run = tmp_path_factory.mktemp("ops")
    return {
        "METRICS_PORT": str(free_port()),
        "READY_FILE": str(run / "worker.ready"),
        "TASK_EVENTS": "true",
    }


@pytest.fixture(scope="module")
def worker(workers: WorkerFactory, ops_env: dict[str, str]) -> Iterator[WorkerProcess]:
    yield workers.start(**ops_env)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def health_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.health", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ready_only_after_model_load(
    worker: WorkerProcess, ops_env: dict[str, str], worker_env: dict[str, str], tmp_path: Path
) -> None:
    info = json.loads(Path(ops_env["READY_FILE"]).read_text())
    assert info["pid"] == worker.pid and info["model"] == "resnet50"
    port = ops_env["METRICS_PORT"]
    assert get(f"http://127.0.0.1:{port}/ready") == (200, "ready\n")
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    env = {**worker_env, **ops_env}
    ok = health_cli(env)
    assert ok.returncode == 0 and "ready" in ok.stdout
    assert health_cli({**worker_env, "METRICS_PORT": port}).returncode == 0
    stale = tmp_path / "stale.ready"
    stale.write_text(json.dumps({"pid": 2**22 + 12345}))
    assert health_cli(env, "--file", str(stale)).returncode == 1
    assert health_cli(env, "--file", str(tmp_path / "none")).returncode == 1
    assert health_cli(worker_env).returncode == 2  # neither configured


def test_ready_file_goes_away_on_shutdown(workers: WorkerFactory, tmp_path: Path) -> None:
    ready = tmp_path / "standin.ready"
    ready.write_text(json.dumps({"pid": os.getpid()}))  # left over from a previous run
    standin = workers.start(MODEL="sleep:1ms", READY_FILE=str(ready))
    assert json.loads(ready.read_text())["pid"] == standin.pid
    assert standin.stop() == 0
    assert not ready.exists()


def test_metrics_scrape(worker: WorkerProcess, client: Client, ops_env: dict[str, str]) -> None:
    ids = client.submit_many(["coffee.jpg", "rocket.jpg", "astronaut.jpg"], top_k=2)
    assert all(o.ok for o in client.wait(ids, timeout=120))
    with pytest.raises(JobFailed):
        client.result(client.submit("missing.jpg"), timeout=60)
    m = samples(ops_env["METRICS_PORT"])
    assert m[("imgqueue_jobs_total", (("outcome", "success"),))] >= 3
    assert m[("imgqueue_jobs_total", (("outcome", "failure"),))] >= 1
    assert m[("imgqueue_job_failures_total", (("error_type", "SourceNotFound"),))] >= 1
    for stage in ("queue_wait", "fetch", "preprocess", "inference", "job_duration"):
        assert m[(f"imgqueue_{stage}_seconds_count", ())] >= 3, stage
    assert m[("imgqueue_batch_size_count", ())] >= 1
    assert m[("imgqueue_batch_size_sum", ())] >= 3
    assert m[("imgqueue_images_inferred_total", ())] >= 3
    assert m[("imgqueue_images_per_second", ())] > 0
    assert m[("imgqueue_model_load_seconds", ())] > 0
    assert m[("imgqueue_ready", ())] == 1


def job_lines(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    lines = [line.split(" job ", 1)[1] for line in worker.log().splitlines() if " job {" in line]
    return {item["id"]: item for item in map(json.loads, lines)}


def test_one_log_line_per_job_without_secrets(
    worker: WorkerProcess, client: Client, http_base: str
) -> None:
    base = http_base.replace("http://", "http://alice:hunter2@")
    good = client.submit(f"{base}/coffee.jpg?sig=topsecret")
    bad = client.submit(f"{base}/status/404?sig=topsecret")
    client.result(good, timeout=60)
    with pytest.raises(JobFailed):
        client.result(bad, timeout=60)
    lines = wait_for(lambda: (j := job_lines(worker)) and good in j and bad in j and j, 10, "logs")
    ok, failed = lines[good], lines[bad]
    assert ok["outcome"] == "success" and ok["source"].endswith("/coffee.jpg?REDACTED")
    assert set(ok["timings_ms"]) >= {"fetch", "preprocess", "inference", "total"}
    assert ok["cached"] is False and ok["batch_size"] >= 1
    assert failed["outcome"] == "failure" and failed["error_type"] == "SourceNotFound"
    log = worker.log()
    assert "hunter2" not in log and "topsecret" not in log  # nor in Celery's own lines


def test_inspect_ping(worker: WorkerProcess, worker_env: dict[str, str]) -> None:
    """A control command to one worker returns with its reply, not at its timeout (a reply
    taken without an ack once went unnoticed by the waiting drain)."""
    name = f"{worker.name}@{socket.gethostname()}"
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "inspect",
            "ping",
            "-t",
            "120",
            "-d",
            name,
        ],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert name in out.stdout and "pong" in out.stdout
    assert time.monotonic() - started < 60  # the CLI's start-up, then one round trip


def test_task_events_for_flower(worker: WorkerProcess, client: Client, redis_url: str) -> None:
    """What Flower consumes: task-received/started/succeeded events from the worker."""
    from celery import Celery

    seen: list[dict[str, Any]] = []
    app = Celery("events-probe", broker=redis_url, set_as_current=False)
    stop = threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            recv = app.events.Receiver(conn, handlers={"*": seen.append})
            for _ in recv.itercapture(limit=None, timeout=None, wakeup=False):
                if stop.is_set():
                    break

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    sent: list[str] = []
    wanted = {"task-received", "task-started", "task-succeeded"}

    def one_task_fully_seen() -> bool:
        sent.append(client.submit("rocket.jpg", top_k=1))  # again until the listener is subscribed
        by_task: dict[str, set[str]] = {}
        for event in list(seen):
            by_task.setdefault(str(event.get("uuid")), set()).add(str(event.get("type")))
        return any(wanted <= by_task.get(task_id, set()) for task_id in sent)

    wait_for(one_task_fully_seen, 30, "received/started/succeeded events", interval=0.5)
    stop.set()
    app.close()


def test_result_cache_hit(
    worker: WorkerProcess, client: Client, http_base: str, redis_url: str
) -> None:
    first = client.result(client.submit("cat.jpg", top_k=3), timeout=60)
    url = f"{http_base}/cat.jpg"  # same bytes, another source
    again = client.result(client.submit(url, top_k=3), timeout=60)
    assert first["cached"] is False and again["cached"] is True
    assert again["source"] == url and first["source"] == "cat.jpg"
    assert again["predictions"] == first["predictions"]
    assert again["weights"] == first["weights"] and again["image"] == first["image"]
    assert "inference" not in again["timings_ms"] and "cache" in again["timings_ms"]
    other_k = client.result(client.submit(url, top_k=4), timeout=60)
    assert other_k["cached"] is False  # top_k is part of the key
    r = redis.Redis.from_url(redis_url)
    keys = r.keys("imgqueue:result-cache:*")
    assert keys and 0 < r.ttl(keys[0]) <= 86_400
    r.close()


def test_a_bulk_reads_and_writes_the_cache_a_chunk_at_a_time(
    worker: WorkerProcess, client: Client, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    names = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]
    first = [o.unwrap() for o in client.wait(client.submit_many(names, top_k=7), timeout=120)]
    assert all(result["cached"] is False for result in first)
    r.config_resetstat()
    again = {o.task_id: o.unwrap() for o in client.wait(client.submit_many(names * 4, top_k=7))}
    assert len(again) == 16 and all(result["cached"] is True for result in again.values())
    stats = r.info("commandstats")
    # One MGET for the chunk's cache keys, plus one for the bulk's skip check (and polling);
    # no GET per image.
    assert stats.get("cmdstat_get", {"calls": 0})["calls"] == 0
    r.close()


def test_retry_is_logged_and_counted(
    worker: WorkerProcess, client: Client, http_base: str, ops_env: dict[str, str]
) -> None:
    task_id = client.submit(f"{http_base}/flaky/1/rocket.jpg", top_k=1)  # one 503, then the file
    assert client.result(task_id, timeout=60)["source"].endswith("/flaky/1/rocket.jpg")

    def logged() -> list[dict[str, Any]]:
        lines = [line for line in worker.log().splitlines() if " job {" in line and task_id in line]
        return [json.loads(line.split(" job ", 1)[1]) for line in lines]

    outcomes = wait_for(lambda: len(logged()) >= 2 and logged(), 10, "two job lines")
    assert [o["outcome"] for o in outcomes] == ["retry", "success"]
    assert outcomes[0]["error_type"] == "FetchFailed" and outcomes[1]["retries"] == 1
    assert samples(ops_env["METRICS_PORT"])[("imgqueue_jobs_total", (("outcome", "retry"),))] >= 1


def test_idle_connections_take_no_thread_and_no_job_from_the_worker(
    worker: WorkerProcess, client: Client, ops_env: dict[str, str]
) -> None:
    """2,000 connections that never send a request, while jobs run and probes come in."""
    port = int(ops_env["METRICS_PORT"])
    warm = client.submit_many(["cat.jpg"] * 32, top_k=1)  # every task thread started
    assert {o.state for o in client.wait(warm, timeout=60)} == {"SUCCESS"}
    threads = len(os.listdir(f"/proc/{worker.pid}/task"))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2000)]
    try:
        ids = client.submit_many(["cat.jpg", "rocket.jpg"] * 10, top_k=1)
        assert get(f"http://127.0.0.1:{port}/ready") == (200, "ready\n")  # not locked out
        assert {o.state for o in client.wait(ids, timeout=60)} == {"SUCCESS"}
        assert len(os.listdir(f"/proc/{worker.pid}/task")) <= threads + 2
        open_fds = len(os.listdir(f"/proc/{worker.pid}/fd"))
        assert open_fds < 600  # the cap (256) bounds the descriptors they can hold
    finally:
        for sock in idle:
            sock.close()
    assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
