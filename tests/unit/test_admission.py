"""A full Redis and a full queue are named errors with their own exit status, against a private
real redis-server (no worker: these only look at the queue lists and INFO)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from core.connections import RedisConfig
from core.errors import BrokerUnavailable, QueueFull, RedisFull
from core.memory import format_bytes, is_out_of_memory
from producer import Client
from producer.limits import Admission, get_limit, limits_key, set_limit
from tests.support.cli import imgqueue as cli
from tests.support.messages import queued_messages
from tests.support.redis_server import RedisServer, with_shipped_users


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(
        tmp_path_factory.mktemp("admission"), extra=["--maxmemory-policy", "noeviction"]
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def r(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.config_set("maxmemory", 0)
    client.flushdb()
    yield client
    client.config_set("maxmemory", 0)
    client.flushdb()
    client.close()


def depth(r: redis.Redis, queue: str = "celery", prefix: str = "") -> int:
    from producer.queues import depth as queue_depth

    return queue_depth(r, RedisConfig(key_prefix=prefix), queue)


def fill(r: redis.Redis) -> None:
    """4 MiB of ballast, then maxmemory 1 MiB under what Redis uses: every write is refused.
    Small pieces, so that no large query buffer is counted in `used_memory` and freed later."""
    for i in range(128):
        r.set(f"ballast:{i}", b"x" * (32 << 10))
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - (1 << 20))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("one-more", b"x")


# -- A: Redis full ---------------------------------------------------------------------------


def test_redis_full_message_carries_the_numbers() -> None:
    exc = RedisFull(4 << 30, 4 << 30, "noeviction")
    assert str(exc) == (
        "Redis is full: used 4.00 GiB of maxmemory 4.00 GiB (noeviction); new work is refused "
        "until memory is freed or raised"
    )
    assert (exc.used_memory, exc.maxmemory) == (4 << 30, 4 << 30)
    assert "used memory > maxmemory" in str(RedisFull(None, None))
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 << 20)] == [
        "0 B",
        "1023 B",
        "1.50 KiB",
        "3.00 MiB",
    ]


def test_out_of_memory_is_found_anywhere_in_the_chain() -> None:
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
    try:
        try:
            raise oom
        except redis.RedisError as inner:
            raise OperationalError(str(inner)) from inner
    except OperationalError as outer:
        assert is_out_of_memory(outer)
    try:
        try:
            raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
        except redis.ResponseError:
            raise redis.exceptions.ExecAbortError("Transaction discarded") from None
    except redis.RedisError as aborted:
        assert is_out_of_memory(aborted)  # its __context__ is the OOM reply
    assert not is_out_of_memory(OperationalError("Connection refused"))
    assert not is_out_of_memory(redis.ResponseError("WRONGTYPE Operation against a key"))


def test_a_full_redis_is_redis_full_not_unreachable(server: RedisServer, r: redis.Redis) -> None:
    fill(r)
    maxmemory = int(str(r.config_get("maxmemory")["maxmemory"]))
    with Client(server.url(), bulk_size=1) as client, pytest.raises(RedisFull) as caught:
        client.submit_many(["cat.jpg", "dog.jpg"])
    exc = caught.value
    assert not isinstance(exc, BrokerUnavailable)
    assert exc.maxmemory == maxmemory and exc.policy == "noeviction"
    assert exc.used_memory is not None and exc.used_memory > maxmemory
    assert str(exc).startswith(f"Redis is full: used {format_bytes(exc.used_memory)} of ")
    assert depth(r) == 0

    out = cli(server.url(), "submit", "cat.jpg")
    assert out.returncode == 4, out.stderr
    assert "error: Redis is full: used " in out.stderr and "(noeviction)" in out.stderr
    assert "cannot reach" not in out.stderr and out.stdout == ""
    out = cli(server.url(), "limits", "set", "celery", "10")  # a write too
    assert out.returncode == 4 and "Redis is full" in out.stderr, out.stderr

    # More room: submitting works again, from the same client too.
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 64 * 1024 * 1024)
    with Client(server.url()) as client:
        assert client.submit("cat.jpg")
    out = cli(server.url(), "submit", "cat.jpg")
    assert out.returncode == 0, out.stderr
    assert depth(r) == 2


# -- B: admission control --------------------------------------------------------------------


def test_past_the_limit_the_whole_call_is_refused_and_nothing_sent(
    server: RedisServer, r: redis.Redis
) -> None:
    assert cli(server.url(), "limits", "set", "celery", "5").returncode == 0
    assert r.hget("imgqueue:limits", "celery") == b"5"
    with Client(server.url(), bulk_size=1) as client:
        client.submit_many(["cat.jpg"] * 3)  # 3 messages
        with pytest.raises(QueueFull) as caught:
            client.submit_many(["cat.jpg"] * 3)  # 3 + 3 > 5: none of them
        assert depth(r) == 3
        exc = caught.value
        assert (exc.queue, exc.depth, exc.limit, exc.adding) == ("celery", 3, 5, 3)
        assert "imgqueue limits set celery" in str(exc)
        # Messages are counted, not images: 128 images in two bulk messages of 64 fit ...
        assert len(client.submit_many(["cat.jpg"] * 128, bulk_size=64)) == 128
        assert depth(r) == 5
        # ... and now even one image is one message too many.
        with pytest.raises(QueueFull):
            client.submit("cat.jpg")
        # Another queue has no limit.
        client.submit_many(["cat.jpg"] * 10, queue="other")
        assert depth(r, "other") == 10
        # Every priority list counts.
        r.delete("celery")
        client.submit_many(["cat.jpg"] * 4, priority=9)
        with pytest.raises(QueueFull):
            client.submit_many(["cat.jpg"] * 2, priority=0)

    out = cli(server.url(), "submit", "--bulk-size", "1", "cat.jpg", "dog.jpg")
    assert out.returncode == 5, out.stderr
    assert "error: queue 'celery' is full: 4 messages waiting, limit 5" in out.stderr
    assert out.stdout == ""

    assert cli(server.url(), "limits", "clear", "celery").returncode == 0
    out = cli(server.url(), "submit", "cat.jpg")
    assert out.returncode == 0, out.stderr
    assert depth(r) == 5


def test_a_client_reads_the_limit_at_most_every_few_seconds(
    server: RedisServer, r: redis.Redis
) -> None:
    def calls(command: str) -> int:
        stats = r.info("commandstats").get(f"cmdstat_{command}", {})
        return int(stats.get("calls", 0))

    config = RedisConfig()
    now = [100.0]
    admission = Admission(r, config, clock=lambda: now[0])
    llens = calls("llen")
    admission.check("celery", 1000)  # no limit: the depth is not read
    assert calls("llen") == llens
    set_limit(r, config, "celery", 2)
    hgets = calls("hget")
    for _ in range(5):
        admission.check("celery", 1)  # the cached "no limit" for 5 s
    assert calls("hget") == hgets
    now[0] += 5.0
    admission.check("celery", 1)
    assert calls("hget") == hgets + 1 and calls("llen") == llens + 10  # one pipelined read
    with pytest.raises(QueueFull):
        admission.check("celery", 3)
    assert calls("hget") == hgets + 1


def test_limits_commands(server: RedisServer, r: redis.Redis) -> None:
    url = server.url()
    assert cli(url, "limits", "set", "celery", "100000").stdout == (
        "celery: at most 100000 messages waiting\n"
    )
    assert cli(url, "limits", "set", "gpu", "0").returncode == 0
    r.lpush("gpu\x06\x163", b"m1", b"m2")
    listed = cli(url, "limits", "list", "--json")
    assert json.loads(listed.stdout) == {
        "celery": {"limit": 100000, "depth": 0},
        "gpu": {"limit": 0, "depth": 2},
    }
    assert cli(url, "limits", "get").stdout == "celery: limit 100000, 0 messages waiting\n"
    assert json.loads(cli(url, "limits", "get", "nolimit", "--json").stdout) == {
        "limit": None,
        "depth": 0,
    }
    assert cli(url, "limits", "clear", "gpu").stdout == "gpu: limit cleared\n"
    human = cli(url, "limits", "list")
    assert human.stdout == "celery: limit 100000, 0 messages waiting\n"
    assert cli(url, "limits", "set", "celery", "-1").returncode == 2


def test_limits_live_under_the_key_prefix(server: RedisServer, r: redis.Redis) -> None:
    config = RedisConfig(key_prefix="t1:")
    assert limits_key(config) == "t1:imgqueue:limits"
    set_limit(r, config, "celery", 1)
    assert get_limit(r, RedisConfig(), "celery") is None  # another tenant's
    with Client(server.url(), key_prefix="t1:", bulk_size=1) as client:
        client.submit("cat.jpg")
        assert depth(r, prefix="t1:") == 1
        with pytest.raises(QueueFull):
            client.submit("cat.jpg")
    with Client(server.url(), bulk_size=1) as other:
        other.submit_many(["cat.jpg"] * 3)


def test_shipped_producer_user_reads_limits_and_gets_redis_full(tmp_path: Path) -> None:
    """deploy/redis.conf's users: the producer reads the limits (and may not change them); it
    may not run INFO, so its RedisFull has no numbers but still says full."""
    server = with_shipped_users(tmp_path)
    base = f"127.0.0.1:{server.port}/0"
    admin = redis.Redis(port=server.port, username="admin", password="imgqueue-admin-dev")
    try:
        set_limit(admin, RedisConfig(), "celery", 1)
        with Client(f"redis://producer:imgqueue-producer-dev@{base}", bulk_size=1) as producer:
            producer.submit("cat.jpg")
            with pytest.raises(QueueFull):
                producer.submit("cat.jpg")
            with pytest.raises(redis.exceptions.NoPermissionError):
                set_limit(producer.redis, RedisConfig(), "celery", 1000)
            admin.delete("imgqueue:limits")
            producer.admission.ttl = 0
            admin.config_set("maxmemory-policy", "noeviction")
            fill(admin)
            with pytest.raises(RedisFull) as caught:
                producer.submit("cat.jpg")
            assert caught.value.used_memory is None
            assert str(caught.value).startswith("Redis is full: used memory > maxmemory")
    finally:
        admin.close()
        server.stop()


def test_a_submit_cut_short_by_a_full_redis_prints_what_it_sent(
    server: RedisServer, r: redis.Redis
) -> None:
    """Redis fills up part way through 3,000 single messages: the ones already sent will run,
    so `imgqueue submit` prints their ids (stdout, as on success), names the batch whose fate
    is unknown, and exits 4."""
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + (600 << 10))
    sources = [f"http://127.0.0.1:9/{i}.jpg" for i in range(3000)]
    done = cli(server.url(0), "submit", "--bulk-size", "1", *sources)
    assert done.returncode == 4, done.stderr
    printed = done.stdout.split()
    uncertain = [x.split()[1] for x in done.stderr.splitlines() if x.startswith("uncertain ")]
    queued = {json.loads(m)["headers"]["id"] for m in queued_messages(r, ["celery"])}
    assert printed and len(printed) < 3000
    assert set(printed) <= queued <= set(printed) | set(uncertain)
    assert f"{len(printed)} of 3000 job(s) were sent before the error" in done.stderr
