"""End to end: producer → Redis → real celery worker → JSON result (the core contract)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.contract import result_key
from producer import Client, JobFailed
from tests.support.fidelity import reference_probabilities
from tests.support.paths import ROOT, SAMPLES
from tests.support.workers import WorkerFactory, WorkerProcess

SAMPLE_NAMES = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]


@pytest.fixture(scope="module")
def worker(workers: WorkerFactory) -> Iterator[WorkerProcess]:
    yield workers.start(BACKEND="auto")  # the default: ONNX Runtime on this CPU at fp32


def test_result_contract(worker: WorkerProcess, client: Client, weights_file: Path) -> None:
    from worker.model.weights import file_digest

    result = client.result(client.submit("cat.jpg", top_k=3), timeout=60)
    assert result["source"] == "cat.jpg"
    assert result["model"] == "resnet50"
    assert result["weights"] == "file:" + file_digest(weights_file)[:12]
    assert result["image"] == {"width": 451, "height": 300, "format": "JPEG"}
    # BACKEND=auto on a CPU at fp32 (the tests pin fp32) is ONNX Runtime, and says so.
    assert (result["backend"], result["precision"], result["device"]) == (
        "onnxruntime",
        "fp32",
        "cpu",
    )
    preds = result["predictions"]
    assert len(preds) == 3
    assert [sorted(p) for p in preds] == [["index", "label", "probability"]] * 3
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(isinstance(p["label"], str) and p["label"] for p in preds)
    assert set(result["timings_ms"]) >= {"fetch", "preprocess", "inference"}


def test_parity_with_torchvision(worker: WorkerProcess, client: Client, weights_file: Path) -> None:
    ids = client.submit_many(SAMPLE_NAMES, top_k=1000)
    for name, task_id in zip(SAMPLE_NAMES, ids, strict=True):
        result = client.result(task_id, timeout=120)
        got = {p["index"]: p["probability"] for p in result["predictions"]}
        assert len(got) == 1000
        expected = reference_probabilities(weights_file, SAMPLES / name)
        worst = max(abs(got[i] - expected[i]) for i in range(1000))
        assert worst < 1e-5, f"{name}: max |Δp| = {worst}"


def test_url_source(worker: WorkerProcess, client: Client, http_base: str) -> None:
    url = f"{http_base}/coffee.jpg"
    result = client.result(client.submit(url), timeout=60)
    assert result["source"] == url
    assert result["image"]["width"] == 600


@pytest.mark.parametrize(
    ("source", "error_type"),
    [
        ("not-an-image.jpg", "NotAnImage"),
        ("truncated.jpg", "NotAnImage"),
        ("empty.png", "NotAnImage"),
        ("missing.jpg", "SourceNotFound"),
        ("../outside.jpg", "SourceNotAllowed"),
        ("/etc/passwd", "SourceNotAllowed"),
        ("ftp://example.com/cat.jpg", "SourceNotAllowed"),
        ("{http}/status/404", "SourceNotFound"),
        ("{http}/nothing-here.jpg", "SourceNotFound"),
    ],
)
def test_bad_input_fails_with_named_error_and_worker_goes_on(
    worker: WorkerProcess, client: Client, http_base: str, source: str, error_type: str
) -> None:
    bad = client.submit(source.format(http=http_base))
    good = client.submit("rocket.jpg")
    with pytest.raises(JobFailed) as info:
        client.result(bad, timeout=60)
    assert info.value.error_type == error_type
    assert info.value.message
    assert client.result(good, timeout=60)["image"]["format"] == "JPEG"
    assert worker.alive()


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (["cat.jpg"], {"top_k": 0}, "top_k"),
        (["cat.jpg"], {"top_k": 5000}, "top_k"),
        (["cat.jpg"], {"top_k": "5"}, "top_k"),
        (["cat.jpg"], {"colour": "red"}, "unknown keyword"),
        ([42], {}, "source must be"),
        ([], {}, "exactly one"),
    ],
)
def test_bad_arguments_are_rejected(
    worker: WorkerProcess,
    client: Client,
    args: list[object],
    kwargs: dict[str, object],
    fragment: str,
) -> None:
    res = client.celery.send_task("classify", args=args, kwargs=kwargs)
    with pytest.raises(JobFailed) as info:
        client.result(res.id, timeout=60)
    assert info.value.error_type == "InvalidArguments"
    assert fragment in info.value.message


def test_result_is_plain_json_in_redis(worker: WorkerProcess, client: Client) -> None:
    """What an app in another language reads: GET celery-task-meta-<id>, parse JSON."""
    task_id = client.submit("astronaut.jpg", top_k=1)
    client.result(task_id, timeout=60)
    meta = json.loads(client.redis.get(result_key(task_id)) or b"null")
    assert meta["status"] == "SUCCESS"
    assert meta["task_id"] == task_id
    assert meta["result"]["predictions"][0]["probability"] > 0

    failed = client.submit("missing.jpg")
    with pytest.raises(JobFailed):
        client.result(failed, timeout=60)
    meta = json.loads(client.redis.get(result_key(failed)) or b"null")
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "SourceNotFound"
    assert "missing.jpg" in meta["result"]["exc_message"][0]


def cli(redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer", "--redis-url", redis_url, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_submit_wait_and_result(
    worker: WorkerProcess, redis_url: str, image_root: Path
) -> None:
    # A directory expands to its image files (sent as given: the worker resolves them).
    sub = image_root / "sub"
    sub.mkdir(exist_ok=True)
    (sub / "cat.jpg").write_bytes((SAMPLES / "cat.jpg").read_bytes())
    (sub / "notes.txt").write_text("skipped: not an image extension")
    out = cli(
        redis_url,
        "submit",
        "--wait",
        "--progress",
        "--top-k",
        "2",
        str(sub),
        "-",
        stdin="coffee.jpg\n\n",
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(line["result"]["source"] for line in lines) == [
        str(sub / "cat.jpg"),
        "coffee.jpg",
    ]
    assert all(
        line["state"] == "SUCCESS" and len(line["result"]["predictions"]) == 2 for line in lines
    )
    assert "2/2" in out.stderr  # the progress bar

    ids = cli(redis_url, "submit", "rocket.jpg", "missing.jpg")
    assert ids.returncode == 0
    task_ids = ids.stdout.split()
    assert len(task_ids) == 2
    polled = cli(redis_url, "result", "--wait", "--timeout", "60", *task_ids)
    assert polled.returncode == 1  # one job failed
    states = {json.loads(line)["id"]: json.loads(line) for line in polled.stdout.splitlines()}
    assert states[task_ids[0]]["state"] == "SUCCESS"
    assert states[task_ids[1]]["error"]["type"] == "SourceNotFound"


def test_python_api_waits_for_many_as_they_finish(worker: WorkerProcess, client: Client) -> None:
    ids = client.submit_many(SAMPLE_NAMES * 3 + ["missing.jpg"], top_k=1)
    outcomes = list(client.wait(ids, timeout=120))
    assert sorted(o.task_id for o in outcomes) == sorted(ids)
    assert sum(o.ok for o in outcomes) == 12
    assert [o.error_type for o in outcomes if not o.ok] == ["SourceNotFound"]
