"""The webhook dispatcher's settings: one frozen dataclass, read once at start from the
environment (`core.settings.load(WebhookSettings)`).

Declared with `core.settings.env` like every other setting, so docs/settings.md lists them
(scripts/settings_doc.py). What workers read too is declared once in core.settings and
inherited: where Redis is (ConnectionSettings), EVENTS_MAXLEN and DEAD_LETTER_LIMIT
(RetentionSettings), METRICS_PORT, METRICS_ADDR and LOG_LEVEL (ProcessSettings),
FETCH_CONNECT_TIMEOUT and FETCH_ALLOW_NETWORKS (UrlPolicySettings). A malformed or out of
range one is a SettingError naming it, which never quotes WEBHOOK_SECRET.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from core.connections import Connected, RedisConfigError
from core.settings import (
    ProcessSettings,
    RetentionSettings,
    SettingError,
    UrlPolicySettings,
    env,
)


def webhook_keys(raw: str) -> tuple[bytes, ...]:
    """WEBHOOK_SECRET's signing keys: each space-separated word is Standard Webhooks'
    `whsec_<base64 of the key>`, or else raw text whose UTF-8 bytes are the key. Raises a
    SettingError that never quotes the secret."""
    keys = []
    for n, word in enumerate(raw.split(), 1):
        if word.startswith("whsec_"):
            try:
                key = base64.b64decode(word[len("whsec_") :], validate=True)
            except ValueError:  # binascii.Error included
                raise SettingError(
                    f"WEBHOOK_SECRET: secret {n} starts with whsec_ but the rest is not base64"
                ) from None
        else:
            key = word.encode()
        if len(key) < 16:
            raise SettingError(
                f"WEBHOOK_SECRET: secret {n} is {len(key)} bytes; use at least 16 (24 to 64 "
                "random bytes, e.g. `whsec_$(openssl rand -base64 32)`)"
            )
        keys.append(key)
    return tuple(keys)


@dataclass(frozen=True)
class WebhookSettings(Connected, RetentionSettings, ProcessSettings, UrlPolicySettings):
    """The webhook dispatcher (`python -m services.webhooks`; docs/lifecycle.md, Webhooks).

    Besides these, what workers read too (core.settings, module doc)."""

    # Several secrets, space separated, each sign every delivery while keys rotate.
    webhook_secret: str = env(
        "",
        str,
        "the webhook dispatcher's (`python -m services.webhooks`) signing secret:"
        " `whsec_<base64>` (Standard Webhooks; e.g. `whsec_$(openssl rand -base64 32)`) or raw"
        " text, at least 16 bytes; several, space separated, while rotating. Never logged; the"
        " dispatcher will not start without one (docs/lifecycle.md)",
        secret=True,
    )
    webhook_timeout: float = env(
        10.0, float, "seconds one webhook attempt may take, connecting to the answer's headers"
    )
    webhook_max_attempts: int = env(10, int, "webhook attempts before a delivery is dead-lettered")
    webhook_retry_backoff: float = env(
        5.0, float, "seconds before a webhook's first retry; doubles, at most an hour"
    )
    webhook_concurrency: int = env(
        16, int, "webhook attempts in flight at once, per dispatcher (threads)"
    )
    events_sweep_after: float = env(
        60.0,
        float,
        "on a Redis Cluster result store: seconds after which a webhook dispatcher appends the"
        " completion events of results whose worker died before appending them"
        " (docs/lifecycle.md)",
    )

    def validate(self) -> None:
        """Raises a SettingError naming the first setting out of bounds."""
        try:
            self.redis_config.validate()
            self.result_config.validate()
        except RedisConfigError as exc:
            raise SettingError(str(exc)) from exc
        RetentionSettings.validate(self)
        ProcessSettings.validate(self)
        webhook_keys(self.webhook_secret)  # raises SettingError, never quoting it
        if not 0.1 <= self.webhook_timeout <= 300 or self.webhook_retry_backoff < 0:
            raise SettingError(
                "WEBHOOK_TIMEOUT must be within 0.1..300 seconds, WEBHOOK_RETRY_BACKOFF >= 0"
            )
        if self.events_sweep_after <= 0:
            raise SettingError("EVENTS_SWEEP_AFTER must be positive")
        if not 1 <= self.webhook_max_attempts <= 100 or not 1 <= self.webhook_concurrency <= 1024:
            raise SettingError(
                "WEBHOOK_MAX_ATTEMPTS must be within 1..100, WEBHOOK_CONCURRENCY within 1..1024"
            )
