"""Object-store sources end to end: one real worker (the stand-in model fetches and decodes
every image) reads s3:// objects from the loopback S3 (tests/support/s3.py); `imgqueue submit`
lists a prefix; a gateway with UPLOAD_URL puts uploads in the bucket."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
import requests

from core.contract import DEFAULT_QUEUE
from tests.support.cli import run_cli
from tests.support.gateway import Gateway, bearer, make_key, prefixed_gateway
from tests.support.messages import queued_messages
from tests.support.s3 import S3, SET_IMAGES, jpeg
from tests.support.workers import WorkerFactory

UPLOADS = "uploads"


@pytest.fixture(scope="module")
def gateway(
    workers: WorkerFactory, s3: S3, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway with UPLOAD_URL and a stand-in worker, both reading the loopback S3."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gw = Gateway(redis_url, log, UPLOAD_URL=s3.url(UPLOADS), **s3.env)  # starts meanwhile
    workers.base_env.update(s3.env)  # this module's workers only
    workers.start(MODEL="sleep:0ms", MODEL_WEIGHTS="IMAGENET1K_V2")
    yield gw.wait_ready()
    gw.stop()


def _upload(gateway: Gateway, key: str) -> requests.Response:
    """POST jpeg() to the gateway as a multipart upload."""
    files = {"file": ("red.jpg", jpeg(), "image/jpeg")}
    return requests.post(f"{gateway.url}/v1/jobs", files=files, headers=bearer(key), timeout=10)


def test_the_cli_submits_objects_and_a_prefix_and_waits_for_them(
    gateway: Gateway, s3_env: S3, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = s3_env.url("missing.jpg")
    sources = [s3_env.url("cat.jpg"), s3_env.url("set/"), missing]
    code, out, err = run_cli(capsys, redis_url, "submit", "--wait", "--timeout", "60", *sources)
    assert code == 1, err  # the missing object failed
    outcomes = [json.loads(line) for line in out.splitlines()]
    succeeded = {o["result"]["source"]: o["result"] for o in outcomes if o["state"] == "SUCCESS"}
    assert sorted(succeeded) == sorted([sources[0], *(s3_env.url(k) for k in SET_IMAGES)])
    png = succeeded[s3_env.url("set/b.png")]["image"]
    assert (png["width"], png["height"], png["format"]) == (10, 12, "PNG")
    (failed,) = [o["error"] for o in outcomes if o["state"] == "FAILURE"]
    assert failed["type"] == "SourceNotFound" and missing in failed["message"], failed


def test_an_upload_lands_in_the_bucket_and_is_classified_from_there(
    gateway: Gateway, s3: S3, redis_url: str
) -> None:
    key = make_key(redis_url, "objects")
    answer = _upload(gateway, key)
    assert answer.status_code == 202, answer.text
    job = answer.json()["id"]
    assert f"{UPLOADS}/{job}" in s3.keys(f"{UPLOADS}/")
    done = requests.get(f"{gateway.url}/v1/jobs/{job}?wait=30", headers=bearer(key), timeout=40)
    result = done.json()["result"]
    assert done.json()["state"] == "SUCCESS", done.text
    assert result["source"] == s3.url(f"{UPLOADS}/{job}")
    assert (result["image"]["width"], result["image"]["height"]) == (24, 16)  # jpeg()'s
    # A prefix is the producer's to list, never the gateway's (its credentials, any tenant).
    listed = requests.post(
        f"{gateway.url}/v1/jobs", json={"source": s3.url("set/")}, headers=bearer(key), timeout=10
    )
    assert listed.status_code == 422 and "prefix" in listed.text


def test_an_upload_store_that_fails_answers_503_and_queues_nothing(
    s3: S3, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """UPLOAD_URL names a bucket that does not exist: the upload is refused with a 503 a client
    may retry (Retry-After), naming UPLOAD_URL but not the store's own error; no job is sent."""
    prefix = "objects-nobucket:"
    log = tmp_path_factory.mktemp("nobucket") / "gateway.log"
    env = {"UPLOAD_URL": "s3://no-such-bucket/uploads", **s3.env}
    with prefixed_gateway(redis_url, log, prefix, **env) as gw:
        key = make_key(redis_url, "nobucket", prefix=prefix)
        answer = _upload(gw, key)
        assert answer.status_code == 503, answer.text
        assert "UPLOAD_URL" in answer.json()["detail"], answer.text
        assert int(answer.headers["Retry-After"]) > 0
        assert "no-such-bucket" not in answer.text  # the store's error is in the log only
        r = redis.Redis.from_url(redis_url)
        try:
            assert queued_messages(r, [DEFAULT_QUEUE], prefix) == []
        finally:
            r.close()
        assert gw.proc.poll() is None  # and the gateway goes on
