from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import Client
from tests.support.http_server import http_server
from tests.support.paths import ROOT, SAMPLES
from tests.support.redis_server import RedisServer
from tests.support.s3 import s3, s3_env  # noqa: F401  (the loopback S3's fixtures)
from tests.support.workers import WorkerFactory


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole run: never the machine's shared one."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url(0)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def save_random_weights(path: Path, seed: int) -> Path:
    import torch

    from worker.model.classifier import build_network
    from worker.model.spec import resolve_model

    model = build_network(resolve_model(weights=f"random:{seed}"))
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random ResNet-50 weights saved as a state dict, as an air-gapped host would have."""
    return save_random_weights(tmp_path_factory.mktemp("weights") / "resnet50-random0.pth", 0)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IMAGE_ROOT for the workers: the sample photos plus a few broken files."""
    root = tmp_path_factory.mktemp("images")
    for path in SAMPLES.glob("*.jpg"):
        shutil.copy(path, root / path.name)
    data = (SAMPLES / "cat.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "not-an-image.jpg").write_bytes(b"hello, I am text pretending to be a JPEG\n" * 20)
    (root / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="session")
def http_base(image_root: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving IMAGE_ROOT (see tests/support/http_server.py)."""
    with http_server(image_root) as base:
        yield base


@pytest.fixture(scope="session")
def worker_env(redis_url: str, weights_file: Path, image_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "PYTEST"))}
    env.update(
        REDIS_URL=redis_url,
        MODEL_WEIGHTS=str(weights_file),
        IMAGE_ROOT=str(image_root),
        DEVICE="cpu",
        PRECISION="fp32",
        DRAFT_DECODE="false",  # parity is against a full decode
        FETCH_ALLOW_NETWORKS="127.0.0.0/8",
        PYTHONPATH=str(ROOT),
        MAX_BATCH_DELAY_MS="5",
        # ONNX Runtime costs a worker 1-2 s more to start (load the session, check it against
        # torch). test_service.py's worker runs the default (auto) end to end, and
        # test_onnx.py the onnxruntime backend itself; the rest are about the queue.
        BACKEND="torch",
    )
    return env


@pytest.fixture(scope="module")
def workers(
    redis_server: RedisServer, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFactory]:
    """Starts real worker processes for one test module, on an emptied database."""
    flush = redis.Redis.from_url(redis_server.url(0))
    flush.flushdb()
    factory = WorkerFactory(worker_env, tmp_path_factory.mktemp("worker-logs"))
    yield factory
    factory.stop_all()
    flush.flushdb()
    flush.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url) as c:
        yield c
