"""Webhooks on the producer side: submit carries the webhook in each message's headers, and
refuses a bad one before sending anything (tests/system/test_webhook_dispatcher.py: the
dispatcher)."""

from __future__ import annotations

import os

import pytest
import redis

from core.lifecycle import (
    WEBHOOK_HEADER,
)
from producer import Client, InvalidWebhook
from tests.support.messages import headers_of, queued_messages


def test_submit_carries_the_webhook(redis_url: str, redis_client: redis.Redis) -> None:
    queue = f"wh-submit-{os.getpid()}"
    hook = "https://hooks.example.com/in?token=t"
    with Client(redis_url) as client:
        one = client.submit("cat.jpg", queue=queue, webhook=hook)
        many = client.submit_many(["a.jpg", "b.jpg"], queue=queue, webhook=hook, bulk_size=64)
        plain = client.submit("c.jpg", queue=queue)
        for bad in ("ftp://h/x", "https://u:p@h/x", "not a url"):
            with pytest.raises(InvalidWebhook):
                client.submit_many(["d.jpg", "e.jpg"], queue=queue, webhook=bad)
    messages = [headers_of(m) for m in queued_messages(redis_client, [queue])]
    redis_client.delete(queue)
    assert len(messages) == 3  # the refused calls sent nothing
    by_id = {h["id"]: h for h in messages}
    assert by_id[one][WEBHOOK_HEADER] == hook
    assert WEBHOOK_HEADER not in by_id[plain]
    (bulk,) = [h for h in messages if h["task"] == "classify_many"]
    # A bulk message's header holds for each of its images (core.lifecycle; worker/events.py).
    assert bulk[WEBHOOK_HEADER] == hook and len(many) == 2
