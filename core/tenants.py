"""Tenants and their API keys: who may submit over HTTP, to what, and whose jobs are whose.

    imgqueue keys create --tenant acme [--queues celery,bulk] [--models defects] [--max-queued N]
    imgqueue keys list
    imgqueue keys revoke iq_3fA9...        # the key, or the first characters `keys list` shows

Layout, on the broker's Redis (after REDIS_KEY_PREFIX):

- `imgqueue:tenants` (hash): tenant name -> JSON {queues, models, max_queued, webhook_secret,
  created}. The webhook secret signs that tenant's deliveries (services/webhooks/), so no
  tenant can forge deliveries to another's receiver.
- `imgqueue:keys` (hash): sha256 of a key -> JSON {tenant, shown, created}. Only the hash is
  stored: a key is printed once, at `keys create`. Revoking deletes the field; a gateway reads
  keys again at most every KEY_TTL_S seconds, so a revoked key stops working within that.
- `imgqueue:tenant-jobs:<tenant>` (sorted set): the tenant's unfinished jobs, scored by when
  they stop counting (their deadline to finish). `reserve` adds a submit's ids atomically against
  `max_queued`; a worker removes an id when its job reaches a final state.

A tenant's job ids start with its tag (`Tenant.new_id()`: `<tag>-<uuid4>`), so whose a job is
can be told from its id alone, before it has any result: `Tenant.owns(task_id)`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from core.connections import RedisConfig
from core.keys import API_KEYS_KEY, TENANTS_KEY, tenant_jobs_key
from core.text import text

KEY_PREFIX = "iq_"
KEY_TTL_S = 2.0  # a revoked key works at most this long (plus one request) in a gateway
# An unfinished job stops counting against its tenant's max_queued after this long, even if
# no worker ever removed it (a message dead-lettered, a Redis restored from an old snapshot).
JOB_COUNT_TTL_S = 24 * 3600
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SHOWN_CHARS = 10  # the characters of a key `keys list` shows and `keys revoke` takes


class TenantError(ValueError):
    """A tenant name, key or option outside the rules (usage)."""


def tenants_key(config: RedisConfig) -> str:
    return config.key_prefix + TENANTS_KEY


def keys_key(config: RedisConfig) -> str:
    return config.key_prefix + API_KEYS_KEY


def jobs_key(config: RedisConfig, tenant: str) -> str:
    """The tenant's unfinished jobs (a sorted set)."""
    return config.key_prefix + tenant_jobs_key(tenant)


def tag_of(name: str) -> str:
    """The prefix of a tenant's job ids: derived from its name, so any gateway computes it."""
    return hashlib.sha256(f"imgqueue-tenant:{name}".encode()).hexdigest()[:10]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """What a tenant may do. Empty `queues` or `models`: any; `max_queued` None: no quota."""

    name: str
    queues: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    max_queued: int | None = None
    webhook_secret: str = field(default="", repr=False)
    created: float = 0.0

    @property
    def tag(self) -> str:
        return tag_of(self.name)

    def new_id(self) -> str:
        return f"{self.tag}-{uuid.uuid4()}"

    def owns(self, task_id: str) -> bool:
        return task_id.startswith(self.tag + "-")

    def may_use_queue(self, queue: str) -> bool:
        return not self.queues or queue in self.queues

    def may_use_model(self, model: str | None) -> bool:
        return not self.models or (model or "") in self.models

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("name")
        data["queues"], data["models"] = list(self.queues), list(self.models)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, name: str, text: str | bytes) -> Tenant:
        data = json.loads(text)
        return cls(
            name=name,
            queues=tuple(data.get("queues") or ()),
            models=tuple(data.get("models") or ()),
            max_queued=data.get("max_queued"),
            webhook_secret=data.get("webhook_secret", ""),
            created=float(data.get("created", 0.0)),
        )


def check_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise TenantError(
            f"tenant name {name!r}: 1-63 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


def create_key(
    r: Any,
    config: RedisConfig,
    tenant: str,
    *,
    queues: tuple[str, ...] | None = None,
    models: tuple[str, ...] | None = None,
    max_queued: int | None = None,
) -> tuple[str, Tenant]:
    """A new API key for `tenant` (made on first use, with its webhook secret); options given
    replace the tenant's, those left None keep them. Returns the key, shown only now."""
    check_name(tenant)
    if max_queued is not None and max_queued < 0:
        raise TenantError("--max-queued is a number of jobs, 0 or more")
    raw = r.hget(tenants_key(config), tenant)
    old = Tenant.from_json(tenant, raw) if raw else None
    record = Tenant(
        name=tenant,
        queues=queues if queues is not None else (old.queues if old else ()),
        models=models if models is not None else (old.models if old else ()),
        max_queued=max_queued if max_queued is not None else (old.max_queued if old else None),
        webhook_secret=old.webhook_secret if old else secrets.token_urlsafe(32),
        created=old.created if old else time.time(),
    )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = {
        "tenant": tenant,
        "shown": key[: len(KEY_PREFIX) + SHOWN_CHARS],
        "created": time.time(),
    }
    pipe = r.pipeline(transaction=True)
    pipe.hset(tenants_key(config), tenant, record.to_json())
    pipe.hset(keys_key(config), hash_key(key), json.dumps(entry, sort_keys=True))
    pipe.execute()
    return key, record


@dataclass(frozen=True)
class KeyInfo:
    digest: str
    tenant: str
    shown: str
    created: float


def list_keys(r: Any, config: RedisConfig) -> list[KeyInfo]:
    out = []
    for digest, raw in r.hgetall(keys_key(config)).items():
        data = json.loads(raw)
        out.append(
            KeyInfo(text(digest), data["tenant"], data.get("shown", ""), data.get("created", 0))
        )
    return sorted(out, key=lambda k: (k.tenant, k.created))


def revoke(r: Any, config: RedisConfig, key_or_shown: str) -> list[KeyInfo]:
    """Revoke the key given whole, or every key whose shown start is `key_or_shown` (at least
    the prefix and 6 characters). Returns the keys revoked."""
    if len(key_or_shown) < len(KEY_PREFIX) + 6:
        raise TenantError(f"give the key, or its first {len(KEY_PREFIX) + 6}+ characters")
    whole = hash_key(key_or_shown)
    gone = [
        k for k in list_keys(r, config) if k.digest == whole or k.shown.startswith(key_or_shown)
    ]
    if gone:
        r.hdel(keys_key(config), *[k.digest for k in gone])
    return gone


def get_tenant(r: Any, config: RedisConfig, name: str) -> Tenant | None:
    raw = r.hget(tenants_key(config), name)
    return Tenant.from_json(name, raw) if raw else None


class Keyring:
    """Authenticates API keys for a gateway: one HGET per key per KEY_TTL_S (and one for its
    tenant), so a revoked key or a changed tenant takes effect within KEY_TTL_S."""

    def __init__(self, r: Any, config: RedisConfig, ttl: float = KEY_TTL_S) -> None:
        self.r, self.config, self.ttl = r, config, ttl
        self._cache: dict[str, tuple[float, Tenant | None]] = {}

    def cached(self, key: str) -> tuple[bool, Tenant | None]:
        """(known, tenant) from the cache alone, with no I/O: known False means ask
        `authenticate`. A malformed key is known at once to have no tenant."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return True, None
        hit = self._cache.get(hash_key(key))
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return True, hit[1]
        return False, None

    def authenticate(self, key: str) -> Tenant | None:
        """The key's tenant, or None for a key that is unknown or revoked."""
        known, tenant = self.cached(key)
        if known:
            return tenant
        digest = hash_key(key)
        now = time.monotonic()
        raw = self.r.hget(keys_key(self.config), digest)
        tenant = None
        if raw:
            tenant = get_tenant(self.r, self.config, json.loads(raw)["tenant"])
        if len(self._cache) > 10_000:  # bounded: unknown keys are cached too, briefly
            self._cache.clear()
        self._cache[digest] = (now, tenant)
        return tenant


# Atomically: drop entries past their time, refuse when count + new > max, else add the ids.
# KEYS[1] the tenant's jobs; ARGV: now, expire_at, max (-1: none), ttl, ids...
RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local max = tonumber(ARGV[3])
local count = redis.call('ZCARD', KEYS[1])
if max >= 0 and count + (#ARGV - 4) > max then
    return {0, count}
end
for i = 5, #ARGV do
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, count}
"""


def reserve(r: Any, config: RedisConfig, tenant: Tenant, ids: list[str]) -> tuple[bool, int]:
    """Count `ids` against the tenant's max_queued: (admitted, jobs unfinished before)."""
    now = time.time()
    limit = -1 if tenant.max_queued is None else tenant.max_queued
    key = jobs_key(config, tenant.name)
    ok, count = r.eval(
        RESERVE, 1, key, now, now + JOB_COUNT_TTL_S, limit, int(JOB_COUNT_TTL_S), *ids
    )
    return bool(ok), int(count)


def release(r: Any, config: RedisConfig, tenant: str, ids: list[str]) -> None:
    """Stop counting these jobs (they ended, or were never sent)."""
    if ids:
        r.zrem(jobs_key(config, tenant), *ids)


def queued(r: Any, config: RedisConfig, tenant: str) -> int:
    """The tenant's unfinished jobs."""
    return int(r.zcount(jobs_key(config, tenant), time.time(), "+inf"))
