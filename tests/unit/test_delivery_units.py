"""The delivery layer's parts on their own: envelope checks, version checks, settings, and the
Lua scripts run on a real Redis (a database of the session's private redis-server)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producer.connections import RedisConfig, RedisConfigError
from producer.deadletters import MAX_KEPT, DeadLetter, make_entry
from producer.keys import Keys
from tests.support.redis_server import RedisServer
from worker.broker import compat, envelope, scripts
from worker.errors import ConfigError
from worker.settings import Settings

DB = 9
RULES = envelope.Rules(max_bytes=1 << 20, known_tasks=frozenset({"classify"}))


def task_message(**changes: Any) -> dict[str, Any]:
    body = base64.b64encode(json.dumps([["cat.jpg"], {"top_k": 1}, {}]).encode()).decode()
    message: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "classify", "id": "t-1", "lang": "py"},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": "d-1",
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
        },
    }
    message.update(changes)
    return message


def reason(raw: bytes, task_queue: bool = True) -> str | None:
    try:
        envelope.parse(raw, RULES, task_queue=task_queue)
    except envelope.Junk as junk:
        return junk.reason
    return None


def test_a_celery_task_message_passes() -> None:
    assert reason(json.dumps(task_message()).encode()) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"x", "not-json"),
        (b"", "not-json"),
        (b'"a string"', "not-json"),
        (b"\xff\xfe", "not-json"),
        (b"[" * 100_000, "not-json"),
        (
            json.dumps(task_message(body=base64.b64encode(b"[" * 50_000).decode())).encode(),
            "bad-body",
        ),
        (json.dumps({"body": "e30="}).encode(), "bad-envelope"),
        (json.dumps(task_message(properties=[])).encode(), "bad-envelope"),
        (json.dumps(task_message(headers="x")).encode(), "bad-envelope"),
        (json.dumps(task_message(body=None)).encode(), "bad-envelope"),
        (json.dumps(task_message(body="%%%")).encode(), "bad-body"),
        (
            json.dumps(task_message(**{"content-type": "application/x-python-serialize"})).encode(),
            "bad-body",
        ),
        (json.dumps(task_message(body=base64.b64encode(b"[1,").decode())).encode(), "bad-body"),
        (
            json.dumps(task_message(body=base64.b64encode(b"[1, 2, 3]").decode())).encode(),
            "bad-body",
        ),
        (json.dumps(task_message(headers={"id": "t-1"})).encode(), "bad-envelope"),
        (json.dumps(task_message(headers={"task": "classify", "id": 7})).encode(), "bad-envelope"),
        (json.dumps(task_message(headers={"task": "rm -rf", "id": "t"})).encode(), "unknown-task"),
        (
            json.dumps(
                task_message(headers={"task": "classify", "id": "t", "pad": "x" * (1 << 20)})
            ).encode(),
            "too-large",
        ),
    ],
)
def test_junk_gets_a_reason(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


def test_reply_queues_need_only_the_envelope() -> None:
    """`celery inspect` replies are consumed without acks and are not task messages."""
    reply = task_message(headers={"ticket": "x"}, body=base64.b64encode(b'{"ok": 1}').decode())
    assert reason(json.dumps(reply).encode(), task_queue=False) is None
    assert reason(json.dumps(reply).encode(), task_queue=True) == "bad-envelope"


def test_celery_builtins_and_protocol_1_are_known() -> None:
    builtin = task_message(headers={"task": "celery.chord_unlock", "id": "t"})
    assert reason(json.dumps(builtin).encode()) is None
    v1 = base64.b64encode(json.dumps({"task": "classify", "id": "t", "args": []}).encode())
    assert reason(json.dumps(task_message(headers={}, body=v1.decode())).encode()) is None


def test_redis_older_than_7_0_is_refused_naming_both_versions() -> None:
    with pytest.raises(compat.BrokerIncompatible, match=r"Redis 7\.0 or newer.*runs Redis 6\.2"):
        compat.check_redis({"redis_version": "6.2.14"}, "redis-host:6379")
    compat.check_redis({"redis_version": "7.0.0"}, "x")
    compat.check_redis({"redis_version": "7.0.15"}, "x")


def test_missing_kombu_internals_refuse_to_start_naming_the_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kombu.transport import redis as kombu_redis

    monkeypatch.setattr(compat, "_checked", False)
    monkeypatch.setattr(compat, "_EXTENDED", [*compat._EXTENDED, (kombu_redis.Channel, "_gone")])
    with pytest.raises(compat.BrokerIncompatible) as info:
        compat.check()
    text = str(info.value)
    assert "Channel._gone" in text and "kombu 5.7" in text and "celery 5.7" in text


def test_redis_config_from_the_environment() -> None:
    env = {
        "REDIS_URL": "sentinel://:pw@s1:26379/2;sentinel://s2:26380/2",
        "REDIS_SENTINEL_MASTER": "mymaster",
        "REDIS_KEY_PREFIX": "t1:",
    }
    config = RedisConfig.from_env(env)
    assert config.sentinels() == [("s1", 26379), ("s2", 26380)]
    assert config.db == 2
    assert config.result_key("abc") == "t1:celery-task-meta-abc"
    assert config.key("dead-letters") == "t1:imgqueue:dead-letters"
    assert config.broker_transport_options()["master_name"] == "mymaster"
    assert config.broker_transport_options()["global_keyprefix"] == "t1:"
    assert config.broker_transport_options()["priority_steps"] == list(range(10))
    assert "pw" not in config.safe_url()
    with pytest.raises(RedisConfigError, match="REDIS_SENTINEL_MASTER is not set"):
        RedisConfig.from_env({"REDIS_URL": "sentinel://s1:26379"})
    with pytest.raises(RedisConfigError, match="must end with"):
        RedisConfig.from_env({"REDIS_KEY_PREFIX": "t1"})
    with pytest.raises(RedisConfigError, match="but REDIS_URL is not sentinel"):
        RedisConfig.from_env({"REDIS_SENTINEL_MASTER": "m"})


def test_delivery_settings_are_validated() -> None:
    s = Settings.from_env({"DEAD_WORKER_TIMEOUT": "5", "RESULT_FAILURE_EXPIRES": "60"})
    assert s.dead_worker_timeout == 5.0 and s.result_failure_expires == 60
    assert Settings.from_env({}).result_failure_expires is None
    for bad in (
        {"DEAD_WORKER_TIMEOUT": "0.1"},
        {"BROKER_POLL_INTERVAL": "0"},
        {"MAX_MESSAGE_BYTES": "10"},
        {"REDIS_URL": "sentinel://s:26379"},
    ):
        with pytest.raises(ConfigError):
            Settings.from_env(bad)


def test_dead_letter_entries_keep_the_message_exactly() -> None:
    raw = b'{"body": "\\u00e9t\\u00e9", "x": 1}'
    entry = DeadLetter.parse(
        make_entry(raw, "bad-envelope", "d", queue="q", list_key="q", worker="w").encode()
    )
    assert entry.message == raw and not entry.truncated
    binary = DeadLetter.parse(
        make_entry(b"\xff\x00", "not-json", "d", queue="q", list_key="q", worker="w").encode()
    )
    assert binary.message == b"\xff\x00"
    big = DeadLetter.parse(
        make_entry(
            b"a" * (MAX_KEPT + 10), "too-large", "", queue="q", list_key="q", worker="w"
        ).encode()
    )
    assert big.truncated and big.size == MAX_KEPT + 10 and len(big.message) == MAX_KEPT


# -- the Lua scripts on a real Redis -------------------------------------------------------


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(DB))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


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
    out = r.eval(scripts.SWEEP, 2, keys.consumers, keys.sweep_lock, keys.base, 15, 3600, 1000)
    assert out == [0, b"dead-1", 3]
    # Back in their original order (m1 at the head), the claimed ones marked redelivered.
    assert r.lrange("q", 0, -1) == [b"m4", b"m3", b"m2-redelivered", b"m1-redelivered"]
    assert r.zrange(keys.consumers, 0, -1) == [b"alive"]
    assert not r.exists(keys.unacked, keys.unacked_at, keys.inboxes, keys.inbox("q"))
    # The lock: a second sweep within the period does nothing.
    again = r.eval(scripts.SWEEP, 2, keys.consumers, keys.sweep_lock, keys.base, 15, 3600, 1000)
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
    out = r.eval(scripts.SWEEP, 2, keys.consumers, keys.sweep_lock, keys.base, 15, 3600, 1000)
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
