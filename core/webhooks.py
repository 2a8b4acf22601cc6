"""Webhook URLs (`submit(..., webhook=URL)`, `imgqueue submit --webhook URL`), checked at submit.

A job's webhook travels in its message (core.lifecycle.WEBHOOK_HEADER, or the "webhook" field of
a bulk image); the dispatcher (`python -m services.webhooks`) POSTs the job's result there once
it ends. What is checked here, before anything is sent: an http or https URL with a host, no
user or password in it (the receiver authenticates deliveries by their signature, see
docs/lifecycle.md), no whitespace or control characters, at most MAX_URL_CHARS. Whether its
address may be reached is the dispatcher's call (FETCH_ALLOW_NETWORKS and the rest of the
fetch policy), as only it knows the policy: a refused one is dead-lettered, never connected to.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

from core.errors import ProducerError
from core.keys import EVENTS_STREAM, WEBHOOK_DEAD_LETTERS, WEBHOOK_RETRIES
from core.lifecycle import WEBHOOK_CONSUMER_GROUP
from core.redaction import display_url
from core.text import text

MAX_URL_CHARS = 2048
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class InvalidWebhook(ProducerError, ValueError):
    """Raised when a webhook URL is not one the dispatcher could POST to (nothing was sent)."""


def check_webhook(url: object) -> str:
    """`url` when it is an acceptable webhook URL; raises InvalidWebhook naming the problem."""
    if not isinstance(url, str) or not url:
        raise InvalidWebhook("a webhook must be a non-empty http or https URL string")
    shown = display_url(url, limit=120)
    if len(url) > MAX_URL_CHARS:
        raise InvalidWebhook(f"webhook URL {shown!r} is over {MAX_URL_CHARS} characters")
    if _SPACE_OR_CONTROL.search(url):
        raise InvalidWebhook(f"webhook URL {shown!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise InvalidWebhook(f"webhook URL {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidWebhook(f"webhook URL {shown!r}: the scheme must be http or https")
    if "@" in parts.netloc:
        raise InvalidWebhook(
            f"webhook URL {shown!r} carries a user or password: receivers authenticate "
            "deliveries by their webhook-signature header (WEBHOOK_SECRET) instead"
        )
    if not host:
        raise InvalidWebhook(f"webhook URL {shown!r} has no host")
    return url


def summary(store: Any, key_prefix: str = "", recent: int = 3) -> dict[str, Any]:
    """What `imgqueue status` shows of webhooks, from the result store `store`: deliveries
    waiting for an attempt (`retrying`, first attempts included), the dead letters' count and
    the `recent` newest, and the events no dispatcher has read yet (`lag`; None when unknown,
    `dispatchers: false` when none has ever run); `{"error": ...}` where they cannot be read
    (this Redis user may not, or the store is unreachable).
    """
    import redis

    dead_key = key_prefix + WEBHOOK_DEAD_LETTERS
    try:
        pipe = store.pipeline(transaction=False)
        pipe.zcard(key_prefix + WEBHOOK_RETRIES)
        pipe.llen(dead_key)
        pipe.lrange(dead_key, 0, recent - 1)
        retrying, dead, newest = pipe.execute()
        groups = store.xinfo_groups(key_prefix + EVENTS_STREAM)
    except redis.exceptions.ResponseError as exc:
        if "no such key" not in str(exc).lower():  # NOPERM included
            return {"error": str(exc)}
        groups = []
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        return {"error": str(exc)}
    group = next((g for g in groups if text(g.get("name")) == WEBHOOK_CONSUMER_GROUP), None)
    entries = []
    for raw in newest:
        try:
            entries.append(json.loads(raw))
        except ValueError:
            continue
    return {
        "retrying": int(retrying),
        "dead_letters": int(dead),
        "recent": entries,
        "dispatchers": group is not None,
        "lag": None if group is None or group.get("lag") is None else int(group["lag"]),
    }


def render(hooks: dict[str, Any]) -> list[str]:
    """The human lines of `summary`."""
    if "error" in hooks:
        return [f"webhooks: unknown ({hooks['error']})"]
    if not hooks["dispatchers"] and not hooks["retrying"] and not hooks["dead_letters"]:
        return ["webhooks: none sent (no dispatcher has run: python -m services.webhooks)"]
    lag = "" if hooks["lag"] is None else f", {hooks['lag']} event(s) not yet read"
    lines = [f"webhooks: {hooks['retrying']} retrying, {hooks['dead_letters']} dead-lettered{lag}"]
    for e in hooks["recent"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e.get("at") or 0)))
        lines.append(
            f"  {when}  {e.get('kind', 'job')} {e.get('id')}  {e.get('url')}  "
            f"{e.get('error')} ({e.get('reason')}, {e.get('attempts')} attempt(s))"
        )
    return lines
