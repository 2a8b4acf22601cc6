"""The delivery layer's parts on their own, in this process: envelope checks, version checks,
settings, dead-letter entries (tests/integration/test_delivery_units.py: the Lua scripts on a
real Redis)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from core.connections import RedisConfig, RedisConfigError
from core.deadletters import MAX_KEPT, DeadLetter, make_entry
from core.keys import Keys
from worker.broker import compat, envelope
from worker.errors import ConfigError
from worker.settings import Settings

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
    assert Keys(config.key_prefix).dead_letters == "t1:imgqueue:dead-letters"
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
