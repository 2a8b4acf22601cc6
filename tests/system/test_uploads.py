"""Images submitted as bytes: stored on the broker's Redis before their message, read by the
one job whose id they carry, through a real worker (the stand-in model decodes every image)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import redis
from PIL import Image

from core.contract import BULK_TASK_NAME, TASK_NAME
from core.lifecycle import upload_key
from core.tenants import Tenant
from producer import Client, InvalidSource, JobFailed, ProducerError, RedisFull, UploadTooLarge
from tests.support.messages import queued_messages
from tests.support.paths import SAMPLES
from tests.support.redis_server import RedisServer, with_shipped_users
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory

IDLE = "uploads-idle"  # a queue no worker consumes: its messages and uploads stay put


@pytest.fixture(scope="module")
def upload_worker(workers: WorkerFactory) -> WorkerFactory:
    # MAX_IMAGE_BYTES over every sample, under what a crafted upload holds.
    workers.start(MODEL="sleep:5ms", MAX_IMAGE_BYTES="1000000")
    return workers


def _uploads(r: redis.Redis) -> set[bytes]:
    return set(r.scan_iter(match=upload_key("*"), count=1000))


def test_bytes_and_binary_files_are_classified_as_upload_sources(
    upload_worker: WorkerFactory, client: Client
) -> None:
    cat = (SAMPLES / "cat.jpg").read_bytes()
    from_bytes = client.submit(cat, top_k=3)
    with (SAMPLES / "coffee.jpg").open("rb") as file:
        from_file = client.submit(file)
    for task_id, name in ((from_bytes, "cat.jpg"), (from_file, "coffee.jpg")):
        result = client.result(task_id, timeout=60)
        assert result["source"] == f"upload:{task_id}"
        assert result["predictions"]
        with Image.open(SAMPLES / name) as image:
            assert (result["image"]["width"], result["image"]["height"]) == image.size
        assert result["image"]["format"] == "JPEG"
    assert len(client.result(from_bytes, timeout=1)["predictions"]) == 3

    # Mixed with names, in one bulk message and one message each: every id keeps its place.
    with (SAMPLES / "rocket.jpg").open("rb") as file:
        mixed = [cat, "astronaut.jpg", file]
        for bulk_size in (64, 1):
            if bulk_size == 1:
                file.seek(0)
            ids = client.submit_many(mixed, bulk_size=bulk_size)
            results = [client.result(i, timeout=60) for i in ids]
            assert [r["source"] for r in results] == [
                f"upload:{ids[0]}",
                "astronaut.jpg",
                f"upload:{ids[2]}",
            ]
            with Image.open(SAMPLES / "rocket.jpg") as rocket:
                assert results[2]["image"]["width"] == rocket.size[0]


def test_a_tenants_upload_carries_its_id_and_goes_when_the_job_ends(
    upload_worker: WorkerFactory, client: Client, redis_client: redis.Redis
) -> None:
    acme = Tenant("acme-uploads", max_queued=10)
    ids = client.submit_many([(SAMPLES / "cat.jpg").read_bytes(), "cat.jpg"], tenant=acme)
    assert all(acme.owns(i) for i in ids)  # planned once: the upload's source names the same id
    result = client.result(ids[0], timeout=60)
    assert result["source"] == f"upload:{ids[0]}"
    client.result(ids[1], timeout=60)
    wait_for(lambda: not redis_client.exists(upload_key(ids[0])), 30, "the upload to be deleted")


def test_uploads_wait_in_redis_with_their_ttl_until_their_job_runs(
    redis_url: str, redis_client: redis.Redis
) -> None:
    data = (SAMPLES / "cat.jpg").read_bytes()
    with Client(redis_url, upload_ttl_s=90) as client:
        task_id = client.submit(data, queue=IDLE)
    key = upload_key(task_id)
    assert redis_client.get(key) == data
    assert 0 < redis_client.ttl(key) <= 90
    (message,) = [json.loads(m) for m in queued_messages(redis_client, [IDLE])]
    assert message["headers"]["id"] == task_id
    assert message["headers"]["argsrepr"] == repr([f"upload:{task_id}"])
    redis_client.delete(key, IDLE)


def test_too_large_empty_or_text_uploads_are_refused_with_nothing_sent(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _uploads(redis_client)
    with Client(redis_url, upload_max_bytes=1000) as client:
        with pytest.raises(UploadTooLarge) as info:
            client.submit_many(["cat.jpg", b"x" * 999, b"x" * 1001], queue=IDLE)
        assert (info.value.index, info.value.size, info.value.limit) == (2, 1001, 1000)
        assert isinstance(info.value, ValueError)
        # A file is read no further than the limit: its size is not known, only "more".
        with pytest.raises(UploadTooLarge, match="more than 1000 bytes") as info:
            client.submit(io.BytesIO(b"x" * 5000), queue=IDLE)
        assert info.value.size is None
        with pytest.raises(InvalidSource, match="empty"):
            client.submit_many([b"x", b""], queue=IDLE)
        with pytest.raises(InvalidSource, match="text mode"):
            client.submit(io.StringIO("not bytes"), queue=IDLE)
    assert queued_messages(redis_client, [IDLE]) == []
    assert _uploads(redis_client) == before
    # UPLOAD_MAX_BYTES is the default where the constructor does not say.
    monkeypatch.setenv("UPLOAD_MAX_BYTES", "10")
    with Client(redis_url) as client:
        assert client.upload_max_bytes == 10
        with pytest.raises(UploadTooLarge):
            client.submit(b"x" * 11, queue=IDLE)
    monkeypatch.setenv("UPLOAD_TTL_S", "soon")
    with pytest.raises(ProducerError, match="UPLOAD_TTL_S"):
        Client(redis_url)


def test_an_upload_no_longer_stored_fails_source_not_found(
    upload_worker: WorkerFactory, client: Client
) -> None:
    # A message whose upload expired (or was never stored): as a producer's would look.
    task_id = str(uuid.uuid4())
    client.celery.send_task(TASK_NAME, args=[f"upload:{task_id}"], task_id=task_id)
    with pytest.raises(JobFailed) as info:
        client.result(task_id, timeout=60)
    assert info.value.error_type == "SourceNotFound"
    assert "the upload expired or was never stored" in info.value.message


def test_an_upload_over_max_image_bytes_fails_too_large(
    upload_worker: WorkerFactory, client: Client, redis_client: redis.Redis
) -> None:
    # Stored by hand (the producer's cap is its own): the worker's cap holds for uploads too.
    task_id = str(uuid.uuid4())
    redis_client.set(upload_key(task_id), b"\xff" * 1_000_001, ex=60)
    client.celery.send_task(TASK_NAME, args=[f"upload:{task_id}"], task_id=task_id)
    with pytest.raises(JobFailed) as info:
        client.result(task_id, timeout=60)
    assert info.value.error_type == "TooLarge"
    assert "MAX_IMAGE_BYTES" in info.value.message


def test_a_job_may_not_read_another_jobs_upload(
    upload_worker: WorkerFactory, client: Client, redis_client: redis.Redis
) -> None:
    victim = client.submit((SAMPLES / "cat.jpg").read_bytes(), queue=IDLE)
    thief, bulk_thief = str(uuid.uuid4()), str(uuid.uuid4())
    client.celery.send_task(TASK_NAME, args=[f"upload:{victim}"], task_id=thief)
    client.celery.send_task(
        BULK_TASK_NAME, args=[[{"id": bulk_thief, "source": f"upload:{victim}"}]]
    )
    for task_id in (thief, bulk_thief):
        with pytest.raises(JobFailed) as info:
            client.result(task_id, timeout=60)
        assert info.value.error_type == "SourceNotAllowed"
        assert "another job's upload" in info.value.message
    assert redis_client.exists(upload_key(victim))  # left for its own job
    redis_client.delete(upload_key(victim), IDLE)


def test_a_full_redis_refuses_the_upload_and_keeps_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "full", extra=["--maxmemory-policy", "noeviction"]).start()
    raw = redis.Redis(port=server.port)
    try:
        used = int(raw.info("memory")["used_memory"])
        raw.config_set("maxmemory", used + 1024 * 1024)
        with Client(server.url(0)) as client, pytest.raises(RedisFull):
            client.submit_many([b"\xff" * (3 * 1024 * 1024), b"\xff"], queue=IDLE)
        assert queued_messages(raw, [IDLE]) == []
        assert _uploads(raw) == set()
    finally:
        raw.close()
        server.stop()


def test_the_shipped_producer_user_stores_uploads_and_drops_those_never_sent(
    tmp_path: Path,
) -> None:
    server = with_shipped_users(tmp_path)
    worker = redis.Redis(port=server.port, username="worker", password="imgqueue-worker-dev")
    try:
        url = f"redis://producer:imgqueue-producer-dev@127.0.0.1:{server.port}/0"
        with Client(url) as producer:
            task_id = producer.submit(b"image bytes")
            assert worker.get(upload_key(task_id)) == b"image bytes"
            # A queue this user may not push to: the send fails after the bytes were stored,
            # and they go with it.
            with pytest.raises(ProducerError):
                producer.submit(b"other bytes", queue="not-allowed")
        assert _uploads(worker) == {upload_key(task_id).encode()}
    finally:
        worker.close()
        server.stop()
