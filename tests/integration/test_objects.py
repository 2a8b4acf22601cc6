"""Object-store sources without a worker process: the worker's read (`worker.fetch.fetch`),
the producer's listing, reads and writes, prefixes in `submit_many` and `imgqueue submit`,
all against the loopback S3 (tests/support/s3.py); messages go to a queue no worker reads."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from core import objects
from producer import (
    Client,
    InvalidSource,
    ObjectAccessDenied,
    ObjectNotFound,
    ObjectStoreError,
)
from producer import client as client_module
from tests.support.cli import run_cli
from tests.support.messages import queued_messages
from tests.support.ports import free_port
from tests.support.s3 import BUCKET, LOCKED, S3, SET_IMAGES, jpeg
from tests.support.tcp import tcp_server
from worker.errors import FetchFailed, SourceNotAllowed, SourceNotFound, TooLarge
from worker.fetch import fetch
from worker.settings import Settings

IDLE = "objects-idle"  # no worker consumes it


@pytest.fixture
def idle(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """IDLE emptied before and after the test."""

    def empty() -> None:
        for key in list(redis_client.scan_iter(f"{IDLE}*")):
            redis_client.delete(key)

    empty()
    yield redis_client
    empty()


def settings(s3: S3, **changes: Any) -> Settings:
    return dataclasses.replace(Settings(), **{"s3_endpoint_url": s3.endpoint, **changes})


def sources_queued(r: redis.Redis) -> list[str]:
    """The sources of the messages waiting in IDLE, in order, bulk messages' images included."""
    out: list[str] = []
    for raw in reversed(queued_messages(r, [IDLE])):  # LPUSH: the newest is first
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        task = message["headers"]["task"]
        out += [args[0]] if task == "classify" else [image["source"] for image in args[0]]
    return out


def test_a_worker_reads_an_object_and_names_what_is_missing(s3_env: S3) -> None:
    fetched = fetch(s3_env.url("cat.jpg"), settings(s3_env))
    assert (fetched.kind, fetched.final, fetched.data) == ("object", s3_env.url("cat.jpg"), jpeg())
    with pytest.raises(SourceNotFound, match=f"no such object: s3://{BUCKET}/none.jpg"):
        fetch(s3_env.url("none.jpg"), settings(s3_env))
    with pytest.raises(SourceNotFound, match="bucket 'no-such-bucket' does not exist"):
        fetch("s3://no-such-bucket/cat.jpg", settings(s3_env))
    with pytest.raises(FetchFailed, match="access denied") as denied:
        fetch(s3_env.url("cat.jpg", LOCKED), settings(s3_env))
    assert not denied.value.transient


def test_an_oversize_object_is_refused_by_its_size_before_its_body(s3_env: S3) -> None:
    size = len(jpeg())
    # The message of the size the GET answered with, before the body (a read body that
    # passes the cap says "its body passed ...").
    with pytest.raises(TooLarge, match=f"the image is {size} bytes, over the limit of 100"):
        fetch(s3_env.url("cat.jpg"), settings(s3_env, max_image_bytes=100))


def test_a_silent_or_absent_store_is_a_transient_fetch_failure(s3_env: S3) -> None:
    held: list[socket.socket] = []
    with tcp_server(held.append) as port:  # accepts, never answers
        slow = settings(s3_env, fetch_total_timeout=0.3, s3_endpoint_url=f"http://127.0.0.1:{port}")
        with pytest.raises(FetchFailed, match="FETCH_TOTAL_TIMEOUT") as timeout:
            fetch(s3_env.url("cat.jpg"), slow)
        assert timeout.value.transient
    for conn in held:
        conn.close()
    closed = settings(s3_env, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FetchFailed, match="unavailable") as refused:
        fetch(s3_env.url("cat.jpg"), closed)
    assert refused.value.transient


def test_other_schemes_prefixes_and_bucketless_urls_are_refused(
    s3_env: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for source in ("ftp://host/cat.jpg", s3_env.url("set/"), "s3:///cat.jpg"):
        with pytest.raises(SourceNotAllowed):
            fetch(source, settings(s3_env))
    # az:// through the same code: a store that cannot be set up is the worker's to fix.
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    with pytest.raises(FetchFailed, match="cannot be set up") as unset:
        fetch("az://container/cat.jpg", settings(s3_env))
    assert not unset.value.transient


def test_a_prefix_is_listed_page_by_page_in_order(
    s3_env: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "LIST_PAGE", 2)
    everything = list(objects.iter_objects(s3_env.url("set/")))
    assert everything == [s3_env.url(k) for k in sorted(s3_env.keys("set/"))]
    images = objects.iter_objects(s3_env.url("set/"), suffixes=frozenset({".jpg", ".png"}))
    assert list(images) == [s3_env.url(k) for k in SET_IMAGES]
    assert list(objects.iter_objects(s3_env.url("empty/"))) == []
    with pytest.raises(ObjectNotFound, match="bucket 'no-such-bucket' does not exist"):
        list(objects.iter_objects("s3://no-such-bucket/set/"))


def test_small_objects_are_written_read_and_deleted(s3_env: S3) -> None:
    url = s3_env.url("written/one.bin")
    objects.put_bytes(url, b"12345")
    assert objects.get_bytes(url) == b"12345"
    with pytest.raises(ObjectStoreError, match="over the limit of 4"):
        objects.get_bytes(url, max_bytes=4)
    objects.delete(url)
    objects.delete(url)  # none there: no error
    with pytest.raises(ObjectNotFound):
        objects.get_bytes(url)
    with pytest.raises(ObjectAccessDenied):
        objects.put_bytes(s3_env.url("x", LOCKED), b"1")


def test_submit_many_sends_a_prefix_as_it_lists_it(
    s3_env: S3, redis_url: str, idle: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "_LISTING_WINDOW", 2)  # a window per two objects
    one = s3_env.url("cat.jpg")
    with Client(redis_url) as client:
        ids = client.submit_many([one, s3_env.url("set/")], queue=IDLE)
        assert len(ids) == 5
        assert sources_queued(idle) == [one, *(s3_env.url(k) for k in SET_IMAGES)]
        # A listing that fails part way: what went before was sent, and says so.
        with pytest.raises(ObjectNotFound) as failed:
            client.submit_many([s3_env.url("set/"), "s3://no-such-bucket/x/"], queue=IDLE)
        assert len(failed.value.sent) == 4  # type: ignore[attr-defined]
        with pytest.raises(InvalidSource, match="submit_many lists it"):
            client.submit(s3_env.url("set/"), queue=IDLE)


def test_uploads_go_to_the_bucket_with_an_upload_url(
    s3_env: S3, redis_url: str, idle: redis.Redis
) -> None:
    with Client(redis_url, upload_url=s3_env.url("uploads/")) as client:
        task_id = client.submit(jpeg(), queue=IDLE)
    assert s3_env.keys("uploads/") == [f"uploads/{task_id}"]
    assert sources_queued(idle) == [s3_env.url(f"uploads/{task_id}")]
    assert objects.get_bytes(s3_env.url(f"uploads/{task_id}")) == jpeg()


def test_the_cli_submits_a_prefix_and_explains_a_bad_one(
    s3_env: S3,
    redis_url: str,
    idle: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, err = run_cli(capsys, redis_url, "submit", "--queue", IDLE, s3_env.url("set/"))
    assert (code, len(out.split())) == (0, len(SET_IMAGES)), err
    code, out, err = run_cli(capsys, redis_url, "submit", "--queue", IDLE, s3_env.url("empty/"))
    assert code == 2 and "no image under the prefixes" in err
    code, out, err = run_cli(capsys, redis_url, "submit", "s3://no-such-bucket/a/")
    assert code == 2 and "bucket 'no-such-bucket' does not exist" in err
    # A producer without obstore: the extra to install, named.
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    objects._store.cache_clear()
    code, out, err = run_cli(capsys, redis_url, "submit", s3_env.url("set/"))
    assert code == 2 and "pip install 'imgqueue[objects]'" in err, err
    objects._store.cache_clear()
