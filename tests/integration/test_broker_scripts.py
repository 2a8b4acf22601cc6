"""The delivery layer's RELEASE script (worker/broker/scripts.py) on a real redis-server: a
channel closing cleanly hands back everything its consumer holds, by the keys core.keys names."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from core.keys import Keys, unacked_value
from tests.support.redis_server import RedisServer
from worker.broker import scripts
from worker.broker.liveness import Liveness

DB = 10


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.scratch(DB) as client:
        yield client


def take(r: redis.Redis, keys: Keys, lst: str, tag: str) -> bytes:
    """Fetch the head of `lst` into the consumer's inbox and claim it, as a channel does."""
    inbox = keys.inbox(lst)
    _, message = r.eval(scripts.FETCH, 2, lst, inbox)
    value = unacked_value(lst, message.decode() + "-redelivered")
    args = (inbox, keys.unacked, keys.unacked_at, message, tag, value)
    assert r.eval(scripts.CLAIM, 3, *args) == 1
    return bytes(message)


def release(r: redis.Redis, keys: Keys) -> int:
    """RELEASE as the transport calls it (`Channel._release_all`)."""
    layout = (keys.consumers, keys.inboxes, keys.unacked, keys.unacked_at)
    return int(r.eval(scripts.RELEASE, len(layout), *layout, keys.cid))


def test_release_returns_a_consumers_messages_to_the_head_and_forgets_it(
    r: redis.Redis,
) -> None:
    keys, other = Keys("p:", "c1"), Keys("p:", "c2")
    queue = keys.queue_list("q")
    r.lpush(queue, b"m1", b"m2", b"m3", b"m4", b"m5")  # m1 at the head (the right end)
    assert [take(r, keys, queue, tag) for tag in ("t1", "t2")] == [b"m1", b"m2"]
    r.eval(scripts.FETCH, 2, queue, keys.inbox(queue))  # m3 fetched, its reply lost
    r.hset(keys.inboxes, keys.inbox(queue), queue)
    take(r, other, queue, "t4")
    r.zadd(keys.consumers, {"c1": 1.0, "c2": 2.0})

    assert release(r, keys) == 3
    # Back in their original order, the claimed ones as the channel marked them.
    assert r.lrange(queue, 0, -1) == [b"m5", b"m3", b"m2-redelivered", b"m1-redelivered"]
    assert not r.exists(keys.inboxes, keys.inbox(queue), keys.unacked, keys.unacked_at)
    assert r.zrange(keys.consumers, 0, -1) == [b"c2"]
    assert r.hkeys(other.unacked) == [b"t4"]  # another consumer's messages stay

    assert release(r, keys) == 0  # nothing left: a second close moves nothing


def test_release_drops_an_unacked_value_that_names_no_list(r: redis.Redis) -> None:
    keys = Keys("", "c1")
    r.hset(keys.unacked, "t1", "no newline")
    r.zadd(keys.unacked_at, {"t1": 1.0})
    r.zadd(keys.consumers, {"c1": 1.0})
    assert release(r, keys) == 0
    assert not r.exists(keys.unacked, keys.unacked_at, keys.consumers)


def test_a_channel_closing_hands_back_what_it_took(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    """The transport's own call (`Channel.close`): a message taken and not acknowledged is at
    the head of its queue again, marked redelivered, as soon as the channel closes."""
    from kombu import Connection, Queue

    from producer import Client

    with Client(redis_server.url(DB), bulk_size=1) as client:
        first, _ = client.submit_many(["cat.jpg", "dog.jpg"], queue="rel")
    with Connection(redis_server.url(DB), transport="worker.broker:Transport") as conn:
        channel = conn.channel()
        message = Queue("rel", channel=channel).get(no_ack=False)
        assert message is not None and message.headers["id"] == first
        keys = Keys("", channel.cid)
        assert r.hlen(keys.unacked) == 1
        channel.close()
    assert r.zscore(keys.consumers, keys.cid) is None
    assert not r.exists(keys.inboxes, keys.unacked, keys.unacked_at)
    assert r.llen("rel") == 2
    head = json.loads(r.lindex("rel", -1) or b"{}")
    assert head["headers"]["id"] == first and head["headers"]["redelivered"] is True


def test_the_heartbeats_sweep_returns_a_dead_consumers_messages(r: redis.Redis) -> None:
    """SWEEP as `Liveness.sweep` calls it, with the prefixes of a consumer's keys."""

    class Channel:  # only weakly referenced, by the heartbeat thread this test never starts
        pass

    dead, live = Keys("p:", "dead-1"), Keys("p:", "live-1")
    queue = dead.queue_list("q")
    r.lpush(queue, b"m1", b"m2")
    take(r, dead, queue, "t1")
    r.zadd(dead.consumers, {"dead-1": 1.0})
    channel = Channel()
    Liveness(channel, r, live, dead_after=15, visibility_timeout=3600).sweep()
    assert r.lrange(queue, 0, -1) == [b"m2", b"m1-redelivered"]
    assert not r.exists(dead.unacked, dead.unacked_at, dead.consumers)
