"""Signing deliveries as Standard Webhooks specifies: with WEBHOOK_SECRET's keys, or with the
delivery's tenant's own `webhook_secret` (core.tenants), never with another's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterable
from typing import Any

from core import tenants
from core.settings import SettingError
from services.webhooks.settings import WebhookSettings, webhook_keys

TENANT_TTL = 5.0  # seconds a tenant's webhook secret is kept; a changed one is used after this


def sign(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per key, space separated."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for key in keys
    )


def service_keys(settings: WebhookSettings) -> tuple[bytes, ...]:
    """WEBHOOK_SECRET's keys; a SettingError when it is unset (the dispatcher will not start)."""
    keys = webhook_keys(settings.webhook_secret)
    if not keys:
        raise SettingError(
            "WEBHOOK_SECRET is unset: deliveries are signed with it (Standard Webhooks' "
            "whsec_<base64>, e.g. whsec_$(openssl rand -base64 32))"
        )
    return keys


class TenantKeys:
    """Each tenant's signing keys, from `imgqueue:tenants` on the broker's Redis
    (core.tenants), read at most every TENANT_TTL seconds per tenant."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.config = settings.redis_config
        self._client: Any = None
        self._cache: dict[str, tuple[float, tuple[bytes, ...], str]] = {}
        self._lock = threading.Lock()

    def lookup(self, name: str) -> tuple[tuple[bytes, ...], str]:
        """(the tenant's keys, "") or ((), why none): no such tenant, or no usable secret."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and now - hit[0] < TENANT_TTL:
            return hit[1], hit[2]
        found = tenants.get_tenant(self.client(), self.config, name)
        keys: tuple[bytes, ...] = ()
        why = ""
        if found is None:
            why = f"tenant {name!r} no longer exists: not signed with any other secret"
        else:
            try:
                keys = webhook_keys(found.webhook_secret)
            except SettingError:
                keys = ()
            if not keys:
                why = f"tenant {name!r} has no usable webhook secret"
        with self._lock:
            if len(self._cache) > 10_000:  # bounded, whatever names events carry
                self._cache.clear()
            self._cache[name] = (now, keys, why)
        return keys, why

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self.config.client(socket_connect_timeout=5, socket_timeout=10)
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
