"""Webhooks in this process: the settings and the secrets, the signature (the Standard Webhooks
test vector), check_webhook, an event becoming one delivery, the outbox's hash slot
(tests/system/test_webhook_dispatcher.py: the dispatcher, a real process)."""

from __future__ import annotations

import base64
import json

import pytest
from redis.crc import key_slot

from core.keys import outbox_key
from core.lifecycle import (
    EVENT_FIELDS,
    EVENTS_STREAM,
)
from core.settings import SettingError, load
from core.webhooks import check_webhook
from producer import InvalidWebhook, ProducerError
from services.webhooks.deliveries import MAX_RETRY_DELAY, Delivery, retry_delay
from services.webhooks.settings import WebhookSettings, webhook_keys
from services.webhooks.signing import sign
from tests.support.webhooks import SECRET
from worker.errors import ConfigError


def test_the_default_settings() -> None:
    s = load(WebhookSettings, {})
    assert s.webhook_secret == ""
    assert (s.webhook_timeout, s.webhook_max_attempts) == (10.0, 10)
    assert (s.webhook_retry_backoff, s.webhook_concurrency) == (5.0, 16)
    # The default schedule: 5 s doubling, nine retries over about 43 minutes.
    delays = [retry_delay(n, s.webhook_retry_backoff, jitter=0) for n in range(1, 10)]
    assert delays == [5, 10, 20, 40, 80, 160, 320, 640, 1280]
    assert retry_delay(30, 5.0, jitter=0) == MAX_RETRY_DELAY == 3600
    assert all(5 <= retry_delay(1, 5.0) <= 5.5 for _ in range(100))  # up to 10% later


def test_webhook_secrets_and_their_errors() -> None:
    raw = b"0123456789abcdef0123456789abcdef"
    assert webhook_keys(SECRET) == (raw,)
    assert webhook_keys("a-raw-secret-of-24-chars") == (b"a-raw-secret-of-24-chars",)
    assert webhook_keys(f"{SECRET}  next-secret-000000000") == (raw, b"next-secret-000000000")
    assert webhook_keys("") == ()
    for bad in ("whsec_not*base64", "short", "whsec_" + base64.b64encode(b"tiny").decode()):
        with pytest.raises(SettingError, match="WEBHOOK_SECRET") as info:
            load(WebhookSettings, {"WEBHOOK_SECRET": bad})
        assert bad not in str(info.value)
    assert SECRET not in repr(load(WebhookSettings, {"WEBHOOK_SECRET": SECRET}))
    for name, value in (
        ("WEBHOOK_TIMEOUT", "0"),
        ("WEBHOOK_MAX_ATTEMPTS", "0"),
        ("WEBHOOK_CONCURRENCY", "0"),
        ("WEBHOOK_RETRY_BACKOFF", "-1"),
    ):
        with pytest.raises(SettingError, match=name):
            load(WebhookSettings, {name: value})


def test_the_signature_matches_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks specification's reference libraries.
    keys = webhook_keys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = sign(keys, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    two = sign([*keys, b"x" * 16], "m", 1, b"{}").split()
    assert len(two) == 2 and all(s.startswith("v1,") for s in two)


def test_check_webhook() -> None:
    for good in ("https://hooks.example.com/in", "http://127.0.0.1:8080/x?token=abc"):
        assert check_webhook(good) == good
    bad = {
        "ftp://example.com/x": "scheme",
        "https://user:pass@example.com/x": "user or password",
        "https://:pass@example.com/": "user or password",
        "https:///nohost": "no host",
        "https://example.com/a b": "whitespace",
        "https://example.com:99999/": "not a valid URL",
        "https://example.com/" + "a" * 3000: "over 2048",
        "": "non-empty",
    }
    for url, why in bad.items():
        with pytest.raises(InvalidWebhook, match=why) as info:
            check_webhook(url)
        assert "pass@" not in str(info.value)
    assert issubclass(InvalidWebhook, ProducerError) and issubclass(InvalidWebhook, ValueError)


def test_an_event_becomes_one_delivery() -> None:
    fields = {f.encode(): b"" for f in EVENT_FIELDS}
    assert Delivery.from_event(fields) is None  # no webhook: nothing to deliver
    fields.update({b"id": b"t1", b"webhook": b"https://h/x", b"kind": b"job", b"state": b"SUCCESS"})
    first, again = Delivery.from_event(fields), Delivery.from_event(dict(fields))
    assert first is not None and first == again and first.member() == again.member()  # type: ignore[union-attr]
    assert first.webhook_id == "job_t1"
    assert Delivery.from_member(first.member()) == first
    group = Delivery.from_event({**fields, b"kind": b"group", b"total": b"3"})
    assert group is not None and group.extra == (("total", "3"),)
    assert Delivery.from_member(group.member()) == group


def test_an_event_s_tenant_is_the_delivery_s() -> None:
    fields = {b"id": b"t1", b"webhook": b"https://h/x", b"kind": b"job", b"tenant": b"acme"}
    delivery = Delivery.from_event(fields)
    assert delivery is not None and delivery.tenant == "acme" and delivery.extra == ()
    assert Delivery.from_member(delivery.member()) == delivery
    # A member written before tenants existed reads as no tenant.
    old = json.loads(delivery.member())
    del old["tenant"]
    assert Delivery.from_member(json.dumps(old)).tenant == ""


def test_the_outbox_shares_its_stream_s_hash_slot() -> None:
    """A cluster's outbox and its stream are written by one script: one slot, whatever the
    prefix (a hash tag in it included); a stray brace that would split them gives none."""
    for prefix in ("", "app:", "{tenant7}:", "a{b}c:"):
        stream = prefix + EVENTS_STREAM
        key = outbox_key(stream)
        assert key is not None and key != stream, prefix
        assert key_slot(key.encode()) == key_slot(stream.encode()), prefix
    assert outbox_key("a{b:" + EVENTS_STREAM) is None
    assert outbox_key("x-{}-:" + EVENTS_STREAM) is None  # "{}": the whole name is hashed


def test_the_dispatcher_and_the_worker_share_settings_through_core_only() -> None:
    """Each setting is declared once: what both read in core.settings, the dispatcher's own in
    WebhookSettings; the worker reads no WEBHOOK_* (it never signs)."""
    from dataclasses import fields

    from core.settings import (
        ConnectionSettings,
        ProcessSettings,
        RetentionSettings,
        UrlPolicySettings,
    )
    from worker.settings import Settings

    worker = {f.name for f in fields(Settings)}
    hooks = {f.name for f in fields(WebhookSettings)}
    shared = (ConnectionSettings, RetentionSettings, ProcessSettings, UrlPolicySettings)
    assert worker & hooks == {f.name for cls in shared for f in fields(cls)}
    assert not {n for n in worker if n.startswith("webhook_")}
    assert "events_sweep_after" not in worker
    # A shared setting out of range is refused by both, in the same words.
    for name, value in (("DEAD_LETTER_LIMIT", "0"), ("METRICS_PORT", "70000")):
        with pytest.raises(SettingError, match=name) as info:
            load(WebhookSettings, {name: value})
        with pytest.raises(ConfigError, match=str(info.value)):
            Settings.from_env({name: value})
