"""Images submitted as bytes: stored on the broker's Redis before their message, read by the
one job whose id they carry, through a real worker (the stand-in model decodes every image)."""

from __future__ import annotations

import uuid

import pytest
import redis
from PIL import Image

from core.contract import BULK_TASK_NAME, TASK_NAME
from core.lifecycle import upload_key
from core.tenants import Tenant
from producer import Client, JobFailed
from tests.support.paths import SAMPLES
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory

IDLE = "uploads-idle"  # a queue no worker consumes: its messages and uploads stay put


@pytest.fixture(scope="module")
def upload_worker(workers: WorkerFactory) -> WorkerFactory:
    # MAX_IMAGE_BYTES over every sample, under what a crafted upload holds.
    workers.start(MODEL="sleep:5ms", MAX_IMAGE_BYTES="1000000")
    return workers


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
