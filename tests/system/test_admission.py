"""A full Redis and a full queue are named errors with their own exit status, in the API and
in the CLI as a process (`python -m producer`), against a private real redis-server (no
worker: these only look at the queue lists and INFO)."""

from __future__ import annotations

import json

import pytest
import redis

from core.errors import BrokerUnavailable, QueueFull, RedisFull
from core.memory import format_bytes
from producer import Client
from tests.support.cli import imgqueue as cli
from tests.support.full_redis import (
    depth,
    fill,
    r_fixture,  # noqa: F401  (the fixture `r`)
    server_fixture,  # noqa: F401  (the fixture `server`)
)
from tests.support.messages import queued_messages
from tests.support.redis_server import RedisServer

# -- A: Redis full ---------------------------------------------------------------------------


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
