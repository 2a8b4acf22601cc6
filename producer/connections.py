"""Where Redis is, for producers and workers alike: a URL, a Sentinel master name, a key prefix.

    REDIS_URL=redis://:PASSWORD@host:6379/0            (rediss:// for TLS, unix:// for a socket)
    REDIS_URL='sentinel://s1:26379;sentinel://s2:26379/0'   plus REDIS_SENTINEL_MASTER=mymaster
    REDIS_KEY_PREFIX=tenant1:                          every key the service writes starts with it

Broker and result backend share them. Importing this never imports the worker or torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import redis

from producer.contract import (
    BROKER_KEY_PREFIX,
    DEFAULT_REDIS_URL,
    PRIORITY_STEPS,
    result_key,
)

SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
PREFIX_ENDINGS = ":_-."


class RedisConfigError(ValueError):
    """Raised when REDIS_URL, REDIS_SENTINEL_MASTER or REDIS_KEY_PREFIX is invalid."""


@dataclass(frozen=True)
class RedisConfig:
    """The Redis a service talks to; `RedisConfig.from_env()` reads it from the environment."""

    url: str = DEFAULT_REDIS_URL
    sentinel_master: str = ""
    key_prefix: str = ""

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        sentinel_master: str | None = None,
        key_prefix: str | None = None,
    ) -> RedisConfig:
        """Arguments win over REDIS_URL, REDIS_SENTINEL_MASTER and REDIS_KEY_PREFIX."""
        env = os.environ if environ is None else environ
        config = cls(
            url=(url or env.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL),
            sentinel_master=(
                sentinel_master
                if sentinel_master is not None
                else env.get("REDIS_SENTINEL_MASTER", "").strip()
            ),
            key_prefix=(
                key_prefix if key_prefix is not None else env.get("REDIS_KEY_PREFIX", "").strip()
            ),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if not self.url.startswith(SCHEMES):
            raise RedisConfigError(
                f"REDIS_URL must start with {', '.join(SCHEMES)}; got {self.url.split(':')[0]}:"
            )
        if self.sentinel and not self.sentinel_master:
            raise RedisConfigError(
                "REDIS_URL is a sentinel:// URL but REDIS_SENTINEL_MASTER is not set: it names "
                "the master the sentinels watch (`sentinel monitor <name> ...`)"
            )
        if self.sentinel_master and not self.sentinel:
            raise RedisConfigError("REDIS_SENTINEL_MASTER is set but REDIS_URL is not sentinel://")
        if self.key_prefix and self.key_prefix[-1] not in PREFIX_ENDINGS:
            # Celery's result backend would append "_" itself; the broker would not.
            raise RedisConfigError(
                f"REDIS_KEY_PREFIX must end with one of {' '.join(PREFIX_ENDINGS)} "
                f"(e.g. {self.key_prefix + ':'!r}), so broker and results agree on key names"
            )
        if self.sentinel:
            self.sentinels()  # parses, or raises

    @property
    def sentinel(self) -> bool:
        return self.url.startswith("sentinel://")

    def sentinels(self) -> list[tuple[str, int]]:
        """The (host, port) of each sentinel in a `sentinel://a:26379;sentinel://b:26379` URL."""
        out = []
        for chunk in self.url.split(";"):
            parts = urlsplit(chunk.strip())
            if parts.scheme != "sentinel" or not parts.hostname:
                raise RedisConfigError(f"not a sentinel URL: {_safe(chunk)}")
            out.append((parts.hostname, parts.port or 26379))
        return out

    def _first(self) -> Any:
        return urlsplit(self.url.split(";", 1)[0])

    @property
    def db(self) -> int:
        path = self._first().path.strip("/")
        return int(path) if path.isdigit() else 0

    def key(self, name: str) -> str:
        """A key of the delivery layer (`imgqueue:<name>`), after the prefix."""
        return f"{self.key_prefix}{BROKER_KEY_PREFIX}{name}"

    def result_key(self, task_id: str) -> str:
        return result_key(task_id, self.key_prefix)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client; through the sentinels to the current master for sentinel://."""
        import redis
        from redis.sentinel import Sentinel

        if not self.sentinel:
            return redis.Redis.from_url(self.url, **kwargs)
        first = self._first()
        auth = {
            k: unquote(v)
            for k, v in (("username", first.username), ("password", first.password))
            if v
        }
        sentinel = Sentinel(self.sentinels(), **kwargs)
        master: redis.Redis = sentinel.master_for(
            self.sentinel_master, db=self.db, **auth, **kwargs
        )
        return master

    def broker_transport_options(self) -> dict[str, Any]:
        """kombu transport options for the broker (producers' and workers' alike)."""
        options: dict[str, Any] = {"priority_steps": list(PRIORITY_STEPS)}
        if self.key_prefix:
            options["global_keyprefix"] = self.key_prefix
        if self.sentinel:
            options["master_name"] = self.sentinel_master
        return options

    def backend_transport_options(self) -> dict[str, Any]:
        """Celery's `result_backend_transport_options` for the same Redis."""
        options: dict[str, Any] = {}
        if self.key_prefix:
            options["global_keyprefix"] = self.key_prefix
        if self.sentinel:
            options["master_name"] = self.sentinel_master
        return options

    def safe_url(self) -> str:
        return ";".join(_safe(chunk) for chunk in self.url.split(";"))


def _safe(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
