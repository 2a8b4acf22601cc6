"""Other languages: submit and poll with no code from this project and no Python client.

* redis-cli alone: GET celery-task-meta-<id> and parse the JSON; LPUSH a raw protocol message.
* Node.js: the npm package celery-node submits `classify`, ioredis polls (examples/node).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.contract import result_key
from producer import Client
from tests.support.paths import ROOT
from tests.support.workers import WorkerFactory, WorkerProcess

NODE_DIR = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def worker(workers: WorkerFactory) -> Iterator[WorkerProcess]:
    yield workers.start()


def redis_cli(redis_url: str, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-u", redis_url, "--raw", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout


def test_redis_cli_reads_a_result(worker: WorkerProcess, client: Client, redis_url: str) -> None:
    task_id = client.submit("coffee.jpg", top_k=2)
    client.result(task_id, timeout=60)
    meta = json.loads(redis_cli(redis_url, "GET", result_key(task_id)))
    assert meta["status"] == "SUCCESS" and meta["task_id"] == task_id
    assert len(meta["result"]["predictions"]) == 2
    assert meta["result"]["source"] == "coffee.jpg"


def shell_classify(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "examples/shell/classify.sh"), *args],
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin", "TIMEOUT": "60"},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_shell_submits_a_raw_protocol_message(worker: WorkerProcess, redis_url: str) -> None:
    ok = shell_classify(redis_url, "rocket.jpg", "3")
    assert ok.returncode == 0, ok.stderr
    meta = json.loads(ok.stdout)
    assert meta["status"] == "SUCCESS"
    assert meta["result"]["source"] == "rocket.jpg" and len(meta["result"]["predictions"]) == 3
    bad = shell_classify(redis_url, "missing.jpg")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["result"]["exc_type"] == "SourceNotFound"


@pytest.fixture(scope="module")
def node_example() -> Path:
    """examples/node with its locked dependencies installed (npm ci, from the npm registry)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the Node.js example cannot run")
    if not (NODE_DIR / "node_modules" / "celery-node").is_dir():
        out = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"npm ci failed:\n{out.stdout}\n{out.stderr}"
    return NODE_DIR


def node_classify(node_dir: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", "classify.js", "--redis-url", redis_url, "--timeout", "60", *args],
        cwd=node_dir,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_node_celery_client_submits_classify(
    worker: WorkerProcess, node_example: Path, redis_url: str, http_base: str
) -> None:
    url = f"{http_base}/astronaut.jpg"
    out = node_classify(node_example, redis_url, "--top-k", "2", "cat.jpg", url)
    assert out.returncode == 0, out.stderr
    parsed = [json.loads(line) for line in out.stdout.splitlines()]
    lines = {line["result"]["source"]: line for line in parsed}
    assert set(lines) == {"cat.jpg", url}
    for line in lines.values():
        assert line["state"] == "SUCCESS"
        assert len(line["result"]["predictions"]) == 2
        assert line["result"]["model"] == "resnet50"


def test_node_sees_named_errors(worker: WorkerProcess, node_example: Path, redis_url: str) -> None:
    out = node_classify(node_example, redis_url, "missing.jpg")
    assert out.returncode == 1
    line = json.loads(out.stdout)
    assert line["state"] == "FAILURE"
    assert line["error"]["type"] == "SourceNotFound" and "missing.jpg" in line["error"]["message"]
