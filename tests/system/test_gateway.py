"""The HTTP gateway end to end: a real `imgqueue serve` process, one real worker with the
stand-in model (MODEL=sleep:5ms), the test Redis, `requests` as the client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support import images
from tests.support.gateway import Gateway, bearer, create_key
from tests.support.paths import SAMPLES
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory


@pytest.fixture(scope="module")
def gateway(
    workers: WorkerFactory, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = Gateway(redis_url, tmp_path_factory.mktemp("gateway") / "gateway.log")
    workers.start(MODEL="sleep:5ms", MODEL_WEIGHTS="IMAGENET1K_V2")  # weights never touched
    yield gw.wait_ready()
    gw.stop()


@pytest.fixture(scope="module")
def key(redis_url: str, gateway: Gateway) -> str:
    return create_key(redis_url, "acme")


def submit(gw: Gateway, key: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{gw.url}/v1/jobs", json=body, headers=bearer(key), timeout=10)
    assert answer.status_code == 202, answer.text
    out: dict[str, Any] = answer.json()
    return out


def get(gw: Gateway, key: str, path: str) -> dict[str, Any]:
    answer = requests.get(gw.url + path, headers=bearer(key), timeout=70)
    assert answer.status_code == 200, answer.text
    out: dict[str, Any] = answer.json()
    return out


def test_a_job_is_answered_as_soon_as_it_ends(gateway: Gateway, key: str) -> None:
    job = submit(gateway, key, {"source": "cat.jpg", "top_k": 2})["id"]
    began = time.monotonic()
    done = get(gateway, key, f"/v1/jobs/{job}?wait=30")
    assert time.monotonic() - began < 5  # not the whole wait
    assert (done["id"], done["state"], done["tenant"]) == (job, "SUCCESS", "acme")
    assert len(done["result"]["predictions"]) == 2 and done["result"]["model"] == "sleep:5ms"
    assert done["finished"] and "error" not in done


def test_a_failed_job_carries_the_contracts_error_type(gateway: Gateway, key: str) -> None:
    job = submit(gateway, key, {"source": "no-such-file.jpg"})["id"]
    done = get(gateway, key, f"/v1/jobs/{job}?wait=30")
    assert done["state"] == "FAILURE" and "result" not in done
    assert done["error"]["type"] == "SourceNotFound" and done["error"]["message"]


def test_a_group_end_to_end(gateway: Gateway, key: str) -> None:
    sent = submit(
        gateway, key, {"sources": ["cat.jpg", "coffee.jpg", "missing.jpg"], "group": True}
    )
    group = sent["group"]

    def done() -> dict[str, Any] | None:
        counts = get(gateway, key, f"/v1/groups/{group}")
        return counts if counts["done"] else None

    counts = wait_for(done, 30, "the group to end")
    assert (counts["total"], counts["succeeded"], counts["failed"]) == (3, 2, 1)
    assert counts["progress"] == 1.0 and counts["tenant"] == "acme"
    lines = requests.get(f"{gateway.url}/v1/groups/{group}/results", headers=bearer(key))
    jobs = [json.loads(line) for line in lines.text.splitlines()]
    assert [j["id"] for j in jobs] == sent["ids"]
    assert [j["state"] for j in jobs] == ["SUCCESS", "SUCCESS", "FAILURE"]
    assert jobs[2]["error"]["type"] == "SourceNotFound"


def test_cancelling_an_ended_job_is_too_late(gateway: Gateway, key: str) -> None:
    job = submit(gateway, key, {"source": "cat.jpg"})["id"]
    assert get(gateway, key, f"/v1/jobs/{job}?wait=30")["state"] == "SUCCESS"
    answer = requests.post(f"{gateway.url}/v1/jobs/{job}/cancel", headers=bearer(key), timeout=10)
    assert answer.json() == {"id": job, "outcome": "too-late", "state": "SUCCESS"}


def test_an_uploaded_image_is_classified(gateway: Gateway, key: str) -> None:
    """multipart/form-data: the image's bytes, options as text fields or query parameters."""
    with (SAMPLES / "cat.jpg").open("rb") as image:
        answer = requests.post(
            f"{gateway.url}/v1/jobs?priority=1",
            files={"file": ("cat.jpg", image, "image/jpeg")},
            data={"top_k": "3"},
            headers=bearer(key),
            timeout=10,
        )
    assert answer.status_code == 202, answer.text
    job = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/jobs/{job}"
    done = get(gateway, key, f"/v1/jobs/{job}?wait=30")
    assert done["state"] == "SUCCESS" and len(done["result"]["predictions"]) == 3


def test_an_uploaded_bomb_is_refused_by_the_decoder_and_nothing_else_is_lost(
    gateway: Gateway, key: str
) -> None:
    """An upload reaches the same decode sandbox as any fetched image: a decompression bomb
    (12 kB of PNG, 10000x10000 pixels) fails alone, and the job sent beside it succeeds."""
    answer = requests.post(
        f"{gateway.url}/v1/jobs",
        files=[
            ("file", ("bomb.png", images.bomb(), "image/png")),
            ("file", ("cat.jpg", (SAMPLES / "cat.jpg").read_bytes(), "image/jpeg")),
        ],
        headers=bearer(key),
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    bomb_id, cat_id = answer.json()["ids"]
    bomb = get(gateway, key, f"/v1/jobs/{bomb_id}?wait=30")
    assert bomb["state"] == "FAILURE" and bomb["error"]["type"] == "TooLarge", bomb
    assert get(gateway, key, f"/v1/jobs/{cat_id}?wait=30")["state"] == "SUCCESS"
