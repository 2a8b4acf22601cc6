"""Images submitted as bytes, without a worker: stored on the broker's Redis with their TTL before
their message, refused with nothing sent when too large, empty, text or Redis is full, and the
shipped producer user's rights (tests/system/test_uploads.py: read by their jobs in a worker)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import redis

from core.lifecycle import upload_key
from producer import Client, InvalidSource, ProducerError, RedisFull, UploadTooLarge
from tests.support.messages import queued_messages
from tests.support.paths import SAMPLES
from tests.support.redis_server import RedisServer, with_shipped_users

IDLE = "uploads-idle"  # a queue no worker consumes: its messages and uploads stay put


def _uploads(r: redis.Redis) -> set[bytes]:
    return set(r.scan_iter(match=upload_key("*"), count=1000))


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
