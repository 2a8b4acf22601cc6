"""A loopback S3: moto's ThreadedMotoServer in the test process, one for the whole run, with
fake credentials and a bucket of small images; workers, the gateway and the CLI reach it over
HTTP through S3_ENDPOINT_URL like any S3-compatible store.

Layout of BUCKET: `cat.jpg` and `set/` (a.jpg, b.png, c.jpg, notes.txt, sub/d.jpg), plus
LOCKED, a bucket whose policy denies everything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from tests.support.images import encode

BUCKET = "imgqueue-test"
LOCKED = "imgqueue-locked"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Keys under set/ in listing order, images only (notes.txt is not one).
SET_IMAGES = ("set/a.jpg", "set/b.png", "set/c.jpg", "set/sub/d.jpg")


def jpeg(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", (24, 16), color), "JPEG", quality=90)


@dataclass
class S3:
    """The running server: `endpoint` for S3_ENDPOINT_URL, `env` for processes that use it."""

    endpoint: str
    client: Any  # boto3's, to arrange and inspect objects
    env: dict[str, str] = field(default_factory=dict)

    def url(self, key: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/{key}"

    def keys(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        found = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return [str(o["Key"]) for o in found]


def _fill(client: Any) -> None:
    client.create_bucket(Bucket=BUCKET)
    objects = {
        "cat.jpg": jpeg(),
        "set/a.jpg": jpeg((0, 0, 200)),
        "set/b.png": encode(Image.new("RGB", (10, 12), (0, 200, 0)), "PNG"),
        "set/c.jpg": jpeg((9, 9, 9)),
        "set/notes.txt": b"not an image",
        "set/sub/d.jpg": jpeg((250, 250, 0)),
    }
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    client.create_bucket(Bucket=LOCKED)
    client.put_object(Bucket=LOCKED, Key="cat.jpg", Body=jpeg())
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{LOCKED}", f"arn:aws:s3:::{LOCKED}/*"],
    }
    policy = {"Version": "2012-10-17", "Statement": [deny]}
    client.put_bucket_policy(Bucket=LOCKED, Policy=json.dumps(policy))


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """The loopback S3 for the session (imported into tests/conftest.py)."""
    import boto3  # type: ignore[import-untyped]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    _fill(client)
    try:
        yield S3(endpoint, client, {**CREDENTIALS, "S3_ENDPOINT_URL": endpoint})
    finally:
        client.close()
        server.stop()


@pytest.fixture
def s3_env(s3: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """The loopback S3's settings in this process's environment, for one test."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3
