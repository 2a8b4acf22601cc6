"""One attempt at a leased delivery: its body (fixed at the first), its signature, the POST, and
what becomes of it (delivered, tried again after `retry_delay`, or dead-lettered).

The URL obeys the fetch policy (core/vetted_http.py, as the worker's fetches: public addresses
only unless FETCH_ALLOW_NETWORKS); a refused one is dead-lettered at once, never connected to.
A 3xx is a failed attempt: redirects are not followed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from core import urls
from core.job_errors import InvalidArguments, SourceNotAllowed
from core.redaction import display_url
from core.webhooks import InvalidWebhook, check_webhook
from services.webhooks import payloads
from services.webhooks.deliveries import Attempt, Delivery, Outcome, dead_letter, retry_delay
from services.webhooks.metrics import Metrics
from services.webhooks.sender import Sender
from services.webhooks.settings import WebhookSettings
from services.webhooks.signing import TenantKeys, sign

log = logging.getLogger("imgqueue.webhooks")

USER_AGENT = "imgqueue-webhooks/0.1"


class Deliverer:
    """Makes attempts from any thread: signs with `keys` (WEBHOOK_SECRET's) or the delivery's
    tenant's, POSTs through one shared Sender, and counts each outcome in `metrics`."""

    def __init__(
        self, settings: WebhookSettings, store: Any, keys: Sequence[bytes], metrics: Metrics
    ) -> None:
        self.settings = settings
        self.store = store
        self.prefix = settings.redis_key_prefix
        self.keys = tuple(keys)
        self.metrics = metrics
        self.timeout = settings.webhook_timeout
        # Connecting may take the whole attempt, never longer (a watchdog cuts the rest).
        connect = replace(
            settings, fetch_connect_timeout=min(settings.fetch_connect_timeout, self.timeout)
        )
        self.sender = Sender(connect, settings.webhook_concurrency, metrics.connections.inc)
        self.tenant_keys = TenantKeys(settings)

    def deliver(
        self, member: bytes | str, delivery: Delivery | None = None, raw: Any = payloads.UNREAD
    ) -> Outcome:
        """One attempt at a leased delivery (`raw`: its job's result, if read ahead), and what
        the loop is to write of it."""
        if delivery is None:
            delivery = Delivery.from_member(member)
        if delivery.body is None:
            body = payloads.body(self.store, self.prefix, delivery, raw)
            delivery = replace(delivery, body=body, first_at=time.time())
        keys, why = self.keys, ""
        if delivery.tenant:
            keys, why = self.tenant_keys.lookup(delivery.tenant)
        if why:
            attempt = Attempt(False, error=why, refused=True)
            reason = "tenant"
        else:
            started = time.monotonic()
            attempt = self.attempt(delivery, keys)
            self.metrics.seconds.observe(time.monotonic() - started)
            reason = "refused" if attempt.refused else "attempts"
        delivery = replace(
            delivery,
            attempts=delivery.attempts + 1,
            status=attempt.status,
            last_error=attempt.error,
        )
        if attempt.ok:
            self.metrics.outcomes.labels("delivered").inc()
            log.debug("webhook %s delivered (HTTP %s)", delivery.webhook_id, attempt.status)
            return Outcome(member)
        if attempt.refused or delivery.attempts >= self.settings.webhook_max_attempts:
            self.metrics.outcomes.labels(reason if attempt.refused else "dead").inc()
            return Outcome(member, dead=dead_letter(delivery, reason))
        self.metrics.outcomes.labels("retry").inc()
        delay = retry_delay(delivery.attempts, self.settings.webhook_retry_backoff)
        log.info(
            "webhook %s to %s: attempt %d failed (%s); again in %.1f s",
            delivery.webhook_id,
            display_url(delivery.url),
            delivery.attempts,
            attempt.error,
            delay,
        )
        return Outcome(member, delivery.member(), time.time() + delay)

    def attempt(self, delivery: Delivery, keys: Sequence[bytes] | None = None) -> Attempt:
        """POST the delivery once, signed with `keys` (default WEBHOOK_SECRET's); never raises
        for what the receiver or the network does."""
        try:
            check_webhook(delivery.url)
            target = urls.parse(delivery.url)
        except (InvalidWebhook, InvalidArguments, SourceNotAllowed) as exc:
            return Attempt(False, error=f"refused: {exc}", refused=True)
        body = (delivery.body or "").encode()
        timestamp = int(time.time())
        headers = {
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                self.keys if keys is None else keys, delivery.webhook_id, timestamp, body
            ),
        }
        answer = self.sender.post(target, body, headers, self.timeout)
        if answer.timed_out:
            return Attempt(False, error=f"no answer within WEBHOOK_TIMEOUT ({self.timeout:g} s)")
        if answer.status is None:
            return Attempt(False, error=answer.error, refused=answer.refused)
        if 200 <= answer.status < 300:
            return Attempt(True, answer.status)
        return Attempt(False, answer.status, f"HTTP {answer.status}")

    def close(self) -> None:
        self.sender.close()
        self.tenant_keys.close()
