"""`Idempotency-Key` on POST /v1/jobs: a retried submit answers as the first did and sends nothing.

One key per tenant and client key, on the broker's Redis, for 24 hours:
`<prefix>imgqueue:idem:<tenant>:<sha256 of the client's key>` holding JSON with the request
body's hash and, once the first request has been answered, its answer (status, body, Location).

The first request claims the key with `SET NX` (a short TTL while it submits), so of two
gateways the first writer wins and the other waits for its answer; only then is the answer
stored, with the full TTL, by the request that claimed it. A submit that fails gives the claim
up, so a retry may submit (a 429 or 503 is worth retrying). The same key with another body is
a client's mistake: 422, whatever the first request's fate. Only GET and SET are used: what
deploy/redis.conf's gateway user may do on `imgqueue:idem:*`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from core.connections import RedisConfig
from core.keys import idempotency_key
from services.gateway.problems import Problem

HEADER = "Idempotency-Key"
TTL_S = 24 * 3600
CLAIM_TTL_S = 60  # a claim whose gateway died stops blocking retries after this long
WAIT_S = 10.0  # how long a request waits for another one's answer under the same key
MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    location: str | None


def digest(payload: Any) -> str:
    """A request body's hash, over its meaning (parsed, keys sorted), not its spacing."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str) -> str:
    if not 0 < len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise Problem(422, f"{HEADER} must be 1..{MAX_KEY_CHARS} printable characters")
    return key


class Claim:
    """A request's hold on an idempotency key: the earlier answer to replay, or the right to
    submit and then `store` its answer (or `release` the key when it failed)."""

    def __init__(self, r: Any, key: str, token: str, body: str, replay: Answer | None) -> None:
        self.r, self.key, self.token, self.body, self.replay = r, key, token, body, replay

    def store(self, answer: Answer) -> None:
        record = {"body": self.body, "status": answer.status, "response": answer.body}
        record["location"] = answer.location
        if self._ours():
            self.r.set(self.key, json.dumps(record), xx=True, ex=TTL_S)

    def release(self) -> None:
        if self._ours():
            self.r.set(self.key, self.token, xx=True, px=1)  # as good as DEL (no DEL right)

    def _ours(self) -> bool:
        """Still this request's claim (not expired and taken by another); GET then SET, as the
        gateway's Redis user may (a claim outlives CLAIM_TTL_S only if a submit does)."""
        raw = self.r.get(self.key)
        return raw is not None and raw.decode() == self.token


def claim(r: Any, config: RedisConfig, tenant: str, key: str, body: str) -> Claim:
    """Claim `key` for a request whose body hashes to `body`. Runs in a worker thread (it may
    sleep while another gateway answers the same key)."""
    check_key(key)
    digest = hashlib.sha256(key.encode()).hexdigest()
    redis_key = config.key_prefix + idempotency_key(tenant, digest)
    token = json.dumps({"body": body, "claim": uuid.uuid4().hex})
    deadline = time.monotonic() + WAIT_S
    while True:
        if r.set(redis_key, token, nx=True, ex=CLAIM_TTL_S):
            return Claim(r, redis_key, token, body, None)
        raw = r.get(redis_key)
        if raw is None:
            continue  # released or expired between the two: claim it now
        record = json.loads(raw)
        if record.get("body") != body:
            raise Problem(
                422,
                f"this {HEADER} was used with another request body in the last 24 h; use a "
                "new key for a new request",
                type="IdempotencyKeyReused",
            )
        if "response" in record:
            answer = Answer(int(record["status"]), record["response"], record.get("location"))
            return Claim(r, redis_key, token, body, answer)
        if time.monotonic() > deadline:
            raise Problem(
                409,
                f"a request with this {HEADER} is still being answered; try again",
                headers={"Retry-After": "1"},
            )
        time.sleep(0.05)
