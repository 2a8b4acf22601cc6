"""Models by name: how a job reaches the workers of one model (plain data, no torch).

A worker serves one model. The default model (no name) takes the default queue, `celery`; a
model named N takes the queue `model.N`, so any app can route by convention.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis

from core.contract import DEFAULT_QUEUE
from core.errors import UnknownModel
from core.keys import MODELS_KEY
from core.text import text

if TYPE_CHECKING:
    from core.connections import RedisConfig

log = logging.getLogger("imgqueue.producer")

MODEL_QUEUE_PREFIX = "model."
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class BadModelName(ValueError):
    """Raised when a model name is not lower-case letters, digits, '_', '-' and '.'."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise BadModelName(
            f"model name {name!r}: expected 1-63 lower-case letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def queue_for(name: str | None) -> str:
    """The queue of a model's workers: `celery` for the default model, `model.<name>` else."""
    if not name:
        return DEFAULT_QUEUE
    return MODEL_QUEUE_PREFIX + check_name(name)


# -- the registry: which models workers serve on this Redis ----------------------------------
#
# One hash, `<REDIS_KEY_PREFIX>imgqueue:models`: field = the served name ("" for the default
# model), value = JSON {name, model, arch, version, weights, labels, queue, seen}. A worker
# writes its entry when it becomes ready; an entry stays until `imgqueue model forget NAME`.
# Producers read it (one HGETALL, cached REGISTRY_TTL_S seconds) to refuse a job for a model
# no worker has ever served with UnknownModel, before anything is sent.

REGISTRY_TTL_S = 5.0
REGISTRY_FIELDS = ("name", "model", "arch", "version", "weights", "labels", "queue", "seen")
DEFAULT_LABEL = "(default)"


def models_key(config: RedisConfig) -> str:
    """The registry hash: `<REDIS_KEY_PREFIX>imgqueue:models`."""
    return config.key_prefix + MODELS_KEY


def shown(name: str) -> str:
    """A served name as people read it: `(default)` for the default model."""
    return name or DEFAULT_LABEL


def entry(description: Mapping[str, Any], seen: float | None = None) -> dict[str, Any]:
    """The registry's entry for a loaded model, from what its `describe()` returns."""
    name = str(description.get("name") or "")
    out: dict[str, Any] = {
        "name": name,
        "model": description.get("model"),
        "arch": description.get("arch"),
        "version": description.get("version"),
        "weights": description.get("weights"),
        "labels": description.get("labels"),
        "queue": queue_for(name),
        "seen": round(time.time() if seen is None else seen, 3),
    }
    return out


def register(client: Any, config: RedisConfig, description: Mapping[str, Any]) -> dict[str, Any]:
    """Write (or refresh) a model's entry: one HSET. Returns the entry."""
    value = entry(description)
    client.hset(models_key(config), value["name"], json.dumps(value, sort_keys=True))
    return value


def registered(client: Any, config: RedisConfig) -> dict[str, dict[str, Any]]:
    """Every registered model by served name, sorted ("" first); one HGETALL. An entry that is
    not a JSON object is kept with its queue only (it still names a served model)."""
    out: dict[str, dict[str, Any]] = {}
    for raw_field, raw_value in client.hgetall(models_key(config)).items():
        name = text(raw_field)
        try:
            value = json.loads(raw_value)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            log.warning("model registry: entry %r is not a JSON object", name)
            value = {}
        value["name"] = name
        try:
            value.setdefault("queue", queue_for(name))
        except BadModelName:
            log.warning("model registry: ignoring an entry with a bad name %r", name)
            continue
        out[name] = value
    return dict(sorted(out.items()))


def forget(client: Any, config: RedisConfig, name: str) -> bool:
    """Remove a model's entry (its workers add it again when they next become ready); False
    when it had none."""
    return bool(client.hdel(models_key(config), name))


class Registry:
    """One client's view of the registry: read at most once every `ttl` seconds."""

    def __init__(
        self,
        client: Any,
        config: RedisConfig,
        ttl: float = REGISTRY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.config, self.ttl, self.clock = client, config, ttl, clock
        self._read_at: float | None = None
        self._names: frozenset[str] | None = None  # None: this user may not read it
        self._warned = False

    def _read(self) -> frozenset[str] | None:
        try:
            names = frozenset(registered(self.client, self.config))
        except redis.exceptions.NoPermissionError:
            # An ACL from before the registry: routing must not stop working for it.
            if not self._warned:
                log.warning(
                    "this Redis user may not read %s: model names are not checked "
                    "(deploy/redis.conf's producer user may)",
                    models_key(self.config),
                )
                self._warned = True
            names = None
        self._read_at, self._names = self.clock(), names
        return names

    def check(self, name: str) -> None:
        """Raise UnknownModel unless a worker of `name` has registered. A name missing from a
        cached read is looked up again at once (a worker may have just become ready), so one
        check costs at most one HGETALL."""
        fresh = self._read_at is None or self.clock() - self._read_at >= self.ttl
        names = self._read() if fresh else self._names
        if names is not None and name not in names and not fresh:
            names = self._read()
        if names is not None and name not in names:
            raise UnknownModel(name, sorted(names))
