"""The delivery layer's Lua scripts on their own, run on a real Redis (a database of the
session's private redis-server): fetch by priority, claims, recovery, the dead-letter cap."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from core.keys import Keys
from tests.support.redis_server import RedisServer
from worker.broker import scripts

DB = 9


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.scratch(DB) as client:
        yield client


def claim(r: redis.Redis, keys: Keys, lst: str, tag: str, message: bytes) -> None:
    """What a channel does: fetch into the inbox, then claim."""
    inbox = keys.inbox(lst)
    fetched = r.eval(scripts.FETCH, 2, lst, inbox)
    assert fetched == [1, message]
    assert (
        r.eval(
            scripts.CLAIM,
            3,
            inbox,
            keys.unacked,
            keys.unacked_at,
            message,
            tag,
            lst + "\n" + message.decode() + "-redelivered",
        )
        == 1
    )


def test_fetch_takes_the_highest_priority_list_first(r: redis.Redis) -> None:
    keys = Keys("", "c1")
    r.lpush("q\x06\x169", b"low")
    r.lpush("q", b"high")
    lists = ["q", "q\x06\x165", "q\x06\x169"]
    args = [k for lst in lists for k in (lst, keys.inbox(lst))]
    assert r.eval(scripts.FETCH, len(args), *args) == [1, b"high"]
    assert r.eval(scripts.FETCH, len(args), *args) == [3, b"low"]
    assert r.eval(scripts.FETCH, len(args), *args) is None
    assert r.llen(keys.inbox("q")) == 1 and r.llen(keys.inbox("q\x06\x169")) == 1


def test_one_fetch_moves_up_to_n_messages_highest_priority_first_and_claims_them_at_once(
    r: redis.Redis,
) -> None:
    keys = Keys("", "c2")
    r.lpush("q\x06\x169", b"low")
    r.lpush("q", b"h1", b"h2")  # h1 at the head
    lists = ["q", "q\x06\x169"]
    args = [k for lst in lists for k in (lst, keys.inbox(lst))]
    out = r.eval(scripts.FETCH, len(args), *args, 5)
    assert out == [1, b"h1", 1, b"h2", 2, b"low"]
    inboxes = [keys.inbox("q"), keys.inbox("q"), keys.inbox("q\x06\x169")]
    r.lrem(keys.inbox("q"), 1, b"h2")  # a sweep returned this one meanwhile
    triples = [a for m, t in ((b"h1", "t1"), (b"h2", "t2"), (b"low", "t3")) for a in (m, t, "v")]
    taken = r.eval(scripts.CLAIM_MANY, 2 + 3, keys.unacked, keys.unacked_at, *inboxes, *triples)
    assert taken == [1, 0, 1]
    assert set(r.hkeys(keys.unacked)) == {b"t1", b"t3"}
    # Claim times in whole seconds (rounded up): integer scores, no float parsed per entry.
    claimed = [r.zscore(keys.unacked_at, tag) or 0.0 for tag in ("t1", "t3")]
    assert all(at == int(at) >= r.time()[0] for at in claimed)
    assert r.llen(keys.inbox("q")) == 0 and r.llen(keys.inbox("q\x06\x169")) == 0
    assert r.eval(scripts.FETCH, len(args), *args, 5) is None


def test_a_claim_sent_again_after_its_reply_was_lost_claims_once_and_says_so(
    r: redis.Redis,
) -> None:
    """The channel sends a claim again when its connection dropped before the reply; the
    second call must not read "left the inbox" for messages the first call claimed."""
    keys = Keys("", "c5")
    r.lpush("q", b"m1", b"m2")
    out = r.eval(scripts.FETCH, 2, "q", keys.inbox("q"), 5)
    assert out == [1, b"m1", 1, b"m2"]
    claim_keys = [keys.unacked, keys.unacked_at, keys.inbox("q"), keys.inbox("q")]
    triples = ["m1", "t1", "v1", "m2", "t2", "v2"]
    for _ in range(2):
        assert r.eval(scripts.CLAIM_MANY, len(claim_keys), *claim_keys, *triples) == [1, 1]
    assert r.hgetall(keys.unacked) == {b"t1": b"v1", b"t2": b"v2"}
    assert r.zcard(keys.unacked_at) == 2
    r.lpush("q", b"m3")
    r.eval(scripts.FETCH, 2, "q", keys.inbox("q"))
    single = [keys.inbox("q"), keys.unacked, keys.unacked_at, "m3", "t3", "v3"]
    assert [r.eval(scripts.CLAIM, 3, *single) for _ in range(2)] == [1, 1]
    assert r.hlen(keys.unacked) == 3 and r.llen(keys.inbox("q")) == 0


def test_delivery_scripts_run_when_redis_is_full_and_fetch_does_not(r: redis.Redis) -> None:
    keys = Keys("", "c3")
    r.lpush("q", b"m1", b"m2")
    claim(r, keys, "q", "t1", b"m1")
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", max(used - 1024 * 1024, 1024 * 1024))
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.eval(scripts.FETCH, 2, "q", keys.inbox("q"))
        # An ack's commands, a requeue and a heartbeat still go through.
        r.eval(scripts.REQUEUE, 2, keys.unacked, keys.unacked_at, "t1")
        r.eval(scripts.BEAT, 2, keys.consumers, keys.inboxes, "c3")
        pipe = r.pipeline(transaction=False)
        pipe.hdel(keys.unacked, "t1").zrem(keys.unacked_at, "t1").execute()
    finally:
        r.config_set("maxmemory", 0)
    assert r.lrange("q", 0, -1) == [b"m2", b"m1-redelivered"]


def test_a_dead_consumers_messages_return_to_the_head_oldest_first(r: redis.Redis) -> None:
    keys = Keys("", "dead-1")
    r.lpush("q", b"m1", b"m2", b"m3")  # m1 is at the head (the right end)
    for tag in ("t1", "t2"):
        claim(r, keys, "q", tag, r.lindex("q", -1) or b"")
    r.eval(scripts.FETCH, 2, "q", keys.inbox("q"))  # m3 popped, its reply "lost"
    r.hset(keys.inboxes, keys.inbox("q"), "q")
    r.lpush("q", b"m4")
    r.zadd(keys.consumers, {"dead-1": 1.0, "alive": 9e12})
    out = r.eval(
        scripts.SWEEP, 2, keys.consumers, keys.sweep_lock, *keys.consumer_prefixes, 15, 3600, 1000
    )
    assert out == [0, b"dead-1", 3]
    # Back in their original order (m1 at the head), the claimed ones marked redelivered.
    assert r.lrange("q", 0, -1) == [b"m4", b"m3", b"m2-redelivered", b"m1-redelivered"]
    assert r.zrange(keys.consumers, 0, -1) == [b"alive"]
    assert not r.exists(keys.unacked, keys.unacked_at, keys.inboxes, keys.inbox("q"))
    # The lock: a second sweep within the period does nothing.
    again = r.eval(
        scripts.SWEEP, 2, keys.consumers, keys.sweep_lock, *keys.consumer_prefixes, 15, 3600, 1000
    )
    assert again is None


def test_a_live_consumers_overdue_message_returns_after_the_visibility_timeout(
    r: redis.Redis,
) -> None:
    keys = Keys("p:", "live-1")
    r.lpush("p:q", b"m1", b"m2")
    claim(r, keys, "p:q", "old", b"m1")
    claim(r, keys, "p:q", "new", b"m2")
    r.zadd(keys.unacked_at, {"old": 1.0})  # delivered long ago: hung
    r.zadd(keys.consumers, {"live-1": 9e12})
    out = r.eval(
        scripts.SWEEP, 2, keys.consumers, keys.sweep_lock, *keys.consumer_prefixes, 15, 3600, 1000
    )
    assert out == [1]
    assert r.lrange("p:q", 0, -1) == [b"m1-redelivered"]
    assert r.hkeys(keys.unacked) == [b"new"]


def test_the_dead_letter_list_is_capped(r: redis.Redis) -> None:
    keys = Keys("", "c")
    for i in range(5):
        r.lpush(keys.inbox("q"), f"m{i}".encode())
        dropped = r.eval(
            scripts.DEAD_LETTER_FROM_INBOX,
            2,
            keys.inbox("q"),
            keys.dead_letters,
            f"m{i}".encode(),
            f"e{i}",
            3,
        )
        assert dropped == (1 if i >= 3 else 0)
    assert r.lrange(keys.dead_letters, 0, -1) == [b"e4", b"e3", b"e2"]
    gone = r.eval(
        scripts.DEAD_LETTER_FROM_INBOX, 2, keys.inbox("q"), keys.dead_letters, b"x", "e", 3
    )
    assert gone == -1  # no longer in the inbox: someone returned it; nothing dead-lettered
