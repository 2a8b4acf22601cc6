"""Where Redis is, for producers and workers alike: a URL, a Sentinel master name, a key prefix.

    REDIS_URL=redis://:PASSWORD@host:6379/0            (rediss:// for TLS, unix:// for a socket)
    REDIS_URL='sentinel://s1:26379;sentinel://s2:26379/0'   plus REDIS_SENTINEL_MASTER=mymaster
    REDIS_KEY_PREFIX=tenant1:                          every key the service writes starts with it

Broker and result backend share them, unless RESULT_URL puts the results elsewhere
(`ResultStoreConfig`), e.g. on a Redis Cluster that spreads them over its masters:

    RESULT_URL=redis-cluster://user:PASSWORD@node1:6379,node2:6379,node3:6379

Importing this never imports the worker, torch, or redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

if TYPE_CHECKING:
    import redis

from core.contract import DEFAULT_REDIS_URL
from core.keys import PRIORITY_STEPS, result_key
from core.settings import ConnectionSettings, load

SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
# Set here rather than left to redis-py, whose default changed (none before 8, 5 s since). A
# command that blocks on the server (XREAD BLOCK, a pub/sub wait) blocks for less than
# SOCKET_TIMEOUT: see `block_budget`.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
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
        """Arguments win over REDIS_URL, REDIS_SENTINEL_MASTER and REDIS_KEY_PREFIX
        (core.settings.ConnectionSettings)."""
        declared = load(ConnectionSettings, environ)
        config = cls(
            url=url or declared.redis_url,
            sentinel_master=(
                sentinel_master if sentinel_master is not None else declared.redis_sentinel_master
            ),
            key_prefix=key_prefix if key_prefix is not None else declared.redis_key_prefix,
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

    def result_key(self, task_id: str) -> str:
        return result_key(task_id, self.key_prefix)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client; through the sentinels to the current master for sentinel://."""
        import redis
        from redis.sentinel import Sentinel

        kwargs = _with_timeouts(kwargs, self.url)
        if not self.sentinel:
            return redis.Redis.from_url(self.url, **kwargs)
        first = self._first()
        auth = {
            k: unquote(v)
            for k, v in (("username", first.username), ("password", first.password))
            if v
        }
        sentinel = Sentinel(self.sentinels(), **kwargs)
        options: dict[str, Any] = {**auth, **kwargs}  # typed apart from master_for's classes
        master: redis.Redis = sentinel.master_for(self.sentinel_master, db=self.db, **options)
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
        return backend_options(self.key_prefix, self.sentinel_master if self.sentinel else "")

    def safe_url(self) -> str:
        return ";".join(_safe(chunk) for chunk in self.url.split(";"))


def backend_options(key_prefix: str, sentinel_master: str) -> dict[str, Any]:
    """Celery's `result_backend_transport_options`: the key prefix, a Sentinel master."""
    options: dict[str, Any] = {}
    if key_prefix:
        options["global_keyprefix"] = key_prefix
    if sentinel_master:
        options["master_name"] = sentinel_master
    return options


def _safe(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


# -- the result store ------------------------------------------------------------------------

CLUSTER_SCHEMES = ("redis-cluster://", "rediss-cluster://")
RESULT_SCHEMES = (*SCHEMES, *CLUSTER_SCHEMES)
# Query options a cluster URL may carry (passed to every node's connection).
_CLUSTER_OPTIONS = frozenset(
    {"socket_timeout", "socket_connect_timeout", "health_check_interval", "client_name"}
)
_TLS_OPTIONS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)


@dataclass(frozen=True)
class ResultStoreConfig:
    """Where results live: RESULT_URL (default: REDIS_URL), which may be a Redis Cluster.

    `redis-cluster://[user:pass@]host:port[,host:port...][/0]` (`rediss-cluster://` for TLS)
    names some of a cluster's nodes (the others are discovered); each result key goes to the
    master owning its slot. `redis://`, `rediss://`, `unix://` and `sentinel://` (with
    RESULT_SENTINEL_MASTER, default REDIS_SENTINEL_MASTER) work as for REDIS_URL.
    REDIS_KEY_PREFIX applies here as on the broker. `ResultStoreConfig.from_env()` or
    `ResultStoreConfig.resolve(broker, ...)` build one, validated.
    """

    url: str = DEFAULT_REDIS_URL
    sentinel_master: str = ""
    key_prefix: str = ""

    @classmethod
    def resolve(
        cls, broker: RedisConfig, url: str = "", sentinel_master: str = ""
    ) -> ResultStoreConfig:
        """RESULT_URL `url` (empty: the broker's, with its master name), validated."""
        url = url.strip()
        if not url:
            if sentinel_master.strip() and sentinel_master.strip() != broker.sentinel_master:
                raise RedisConfigError(
                    "RESULT_SENTINEL_MASTER is set but RESULT_URL is not: results then go to "
                    "the broker (REDIS_URL, REDIS_SENTINEL_MASTER)"
                )
            config = cls(broker.url, broker.sentinel_master, broker.key_prefix)
        else:
            master = sentinel_master.strip()
            if not master and url.startswith("sentinel://"):
                master = broker.sentinel_master
            config = cls(url, master, broker.key_prefix)
        config.validate()
        return config

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        sentinel_master: str | None = None,
        broker: RedisConfig | None = None,
    ) -> ResultStoreConfig:
        """Arguments win over RESULT_URL and RESULT_SENTINEL_MASTER
        (core.settings.ConnectionSettings); `broker` (default: from the same environment)
        gives the defaults and the key prefix."""
        declared = load(ConnectionSettings, environ)
        broker = broker or RedisConfig.from_env(environ)
        return cls.resolve(
            broker,
            url if url is not None else declared.result_url,
            sentinel_master if sentinel_master is not None else declared.result_sentinel_master,
        )

    @property
    def cluster(self) -> bool:
        return self.url.startswith(CLUSTER_SCHEMES)

    @property
    def sentinel(self) -> bool:
        return self.url.startswith("sentinel://")

    def validate(self) -> None:
        if not self.url.startswith(RESULT_SCHEMES):
            raise RedisConfigError(
                f"RESULT_URL must start with {', '.join(RESULT_SCHEMES)}; "
                f"got {_safe(self.url).split('://')[0]}://"
            )
        if not self.cluster:
            if "," in self._netloc():
                raise RedisConfigError(
                    f"RESULT_URL {self.safe_url()} lists several hosts: a Redis Cluster is "
                    "written redis-cluster://host1:port,host2:port"
                )
            try:
                RedisConfig(self.url, self.sentinel_master, self.key_prefix).validate()
            except RedisConfigError as exc:
                raise RedisConfigError(_for_results(str(exc))) from exc
            return
        if self.sentinel_master:
            raise RedisConfigError(
                "RESULT_SENTINEL_MASTER is set but RESULT_URL is a Redis Cluster: a cluster "
                "fails over by itself, with no sentinels"
            )
        RedisConfig(key_prefix=self.key_prefix).validate()
        tag = _hash_tag(self.key_prefix)
        if tag:
            raise RedisConfigError(
                f"REDIS_KEY_PREFIX {self.key_prefix!r} holds the hash tag {{{tag}}}: on a Redis "
                "Cluster every result would then map to one slot, on one master; drop the braces"
            )
        self.nodes()  # parses, or raises
        self._cluster_options()
        path = urlsplit(self.url.replace(",", "_")).path.strip("/")
        if path not in ("", "0"):
            raise RedisConfigError(
                f"RESULT_URL {self.safe_url()} names database {path!r}: a Redis Cluster has "
                "database 0 only"
            )

    def _netloc(self) -> str:
        rest = self.url.split("://", 1)[1]
        for end in "/?#":
            rest = rest.split(end, 1)[0]
        return rest

    def _auth(self) -> tuple[str, str]:
        """`user:pass` of a cluster URL (percent-decoded), each possibly empty."""
        netloc = self._netloc()
        if "@" not in netloc:
            return "", ""
        userinfo = netloc.rsplit("@", 1)[0]
        user, _, password = userinfo.partition(":")
        return unquote(user), unquote(password)

    def nodes(self) -> list[tuple[str, int]]:
        """The (host, port) of each node a cluster URL lists (6379 where no port is given)."""
        if not self.cluster:
            raise RedisConfigError("not a Redis Cluster URL")
        netloc = self._netloc()
        if "," in netloc.rsplit("@", 1)[0] and "@" in netloc:
            raise RedisConfigError(
                f"RESULT_URL {self.safe_url()}: write the user and password once, before the "
                "first host (percent-encode @ , / : in a password)"
            )
        hosts = netloc.rsplit("@", 1)[-1]
        out = []
        for chunk in hosts.split(","):
            chunk = chunk.strip()
            try:
                parts = urlsplit(f"//{chunk}")
                port = parts.port
            except ValueError as exc:
                raise RedisConfigError(
                    f"RESULT_URL: bad node {chunk!r} in {self.safe_url()}: {exc}"
                ) from exc
            if not parts.hostname or parts.username is not None or parts.path:
                raise RedisConfigError(
                    f"RESULT_URL: bad node {chunk!r} in {self.safe_url()}: expected host:port "
                    "(the user and password go once, before the first host)"
                )
            if port == 0:
                raise RedisConfigError(f"RESULT_URL: bad node {chunk!r}: port 0")
            out.append((parts.hostname, port or 6379))
        return out

    def _cluster_options(self) -> dict[str, str]:
        query = urlsplit(self.url.replace(",", "_")).query
        options = dict(parse_qsl(query, keep_blank_values=True))
        allowed = _CLUSTER_OPTIONS | (_TLS_OPTIONS if self.url.startswith("rediss-") else set())
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise RedisConfigError(
                f"RESULT_URL: unknown option(s) {', '.join(unknown)} for a Redis Cluster; "
                f"allowed: {', '.join(sorted(allowed))}"
                + ("" if self.url.startswith("rediss-") else " (ssl_* need rediss-cluster://)")
            )
        return options

    def result_key(self, task_id: str) -> str:
        return result_key(task_id, self.key_prefix)

    def client(self, **kwargs: Any) -> Any:
        """A redis-py client: `redis.cluster.RedisCluster` for a cluster, else as RedisConfig."""
        if not self.cluster:
            return RedisConfig(self.url, self.sentinel_master, self.key_prefix).client(**kwargs)
        from redis.cluster import ClusterNode, RedisCluster

        nodes = self.nodes()
        user, password = self._auth()
        tls = self.url.startswith("rediss-")
        # The first node through redis-py's own URL parser (credentials, TLS, query options),
        # the others as further startup nodes.
        auth = ""
        if user or password:
            auth = f"{_quote(user)}:{_quote(password)}@"
        host, port = nodes[0]
        shown = f"[{host}]" if ":" in host else host
        query = urlsplit(self.url.replace(",", "_")).query
        first = f"{'rediss' if tls else 'redis'}://{auth}{shown}:{port}/0" + (
            f"?{query}" if query else ""
        )
        rest = [ClusterNode(h, p) for h, p in nodes[1:]]
        return RedisCluster(url=first, startup_nodes=rest, **_with_timeouts(kwargs, self.url))

    def backend_transport_options(self) -> dict[str, Any]:
        """Celery's `result_backend_transport_options` for this store."""
        return backend_options(self.key_prefix, self.sentinel_master if self.sentinel else "")

    def safe_url(self) -> str:
        if not self.cluster:
            return ";".join(_safe(chunk) for chunk in self.url.split(";"))
        scheme, rest = self.url.split("://", 1)
        netloc = self._netloc()
        if "@" not in netloc:
            return self.url
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.partition(":")[0]
        return f"{scheme}://{user}:***@{hosts}" + rest[len(netloc) :]


def _with_timeouts(kwargs: dict[str, Any], url: str) -> dict[str, Any]:
    """`kwargs` with SOCKET_TIMEOUT and CONNECT_TIMEOUT where neither they nor the URL's query
    (`?socket_timeout=...`) set one."""
    query = dict(parse_qsl(urlsplit(url.replace(",", "_").split(";", 1)[0]).query))
    out = dict(kwargs)
    for name, value in (
        ("socket_timeout", SOCKET_TIMEOUT),
        ("socket_connect_timeout", CONNECT_TIMEOUT),
    ):
        if name not in query:
            out.setdefault(name, value)
    return out


def socket_timeout(client: Any) -> float | None:
    """The socket timeout a redis-py client (plain, Sentinel's or a cluster's) reads with."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:  # RedisCluster: the nodes' shared connection options
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None)
    value = (kwargs or {}).get("socket_timeout")
    return float(value) if value else None


def block_budget(client: Any, wanted: float) -> float:
    """How long a blocking command on `client` may block (seconds): `wanted`, or less, so that
    the reply arrives a second before the client's socket timeout would cut the wait short."""
    timeout = socket_timeout(client)
    if timeout is None:
        return wanted
    return max(min(wanted, timeout - 1.0), min(wanted, timeout / 2))


def _quote(text: str) -> str:
    return quote(text, safe="")


def _hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes instead of the whole, if any (`{...}`)."""
    start = key.find("{")
    if start < 0:
        return ""
    end = key.find("}", start + 1)
    return key[start + 1 : end] if end > start + 1 else ""


def _for_results(message: str) -> str:
    return message.replace("REDIS_SENTINEL_MASTER", "RESULT_SENTINEL_MASTER").replace(
        "REDIS_URL", "RESULT_URL"
    )


def is_cluster_client(client: Any) -> bool:
    """True for a `redis.cluster.RedisCluster` (or its pipeline)."""
    return hasattr(client, "nodes_manager")


def mget(client: Any, keys: Sequence[str]) -> list[Any]:
    """GET many keys in order, on a plain client (one MGET) or a cluster client (the keys
    span slots: one MGET per slot, pipelined to each master; not atomic across slots)."""
    if not keys:
        return []
    if is_cluster_client(client):
        return list(client.mget_nonatomic(list(keys)))
    return list(client.mget(list(keys)))


def result_store_errors() -> tuple[type[Exception], ...]:
    """What reading or writing results raises while a store is down or failing over: a lost
    connection, a timeout, and a cluster's own (CLUSTERDOWN, TRYAGAIN, a slot no master
    covers yet, a redirect that could not be followed). Imports redis."""
    from redis import exceptions as e

    return (
        e.ConnectionError,
        e.TimeoutError,
        e.ClusterDownError,  # MasterDownError too
        e.TryAgainError,
        e.MovedError,
        e.AskError,
        e.SlotNotCoveredError,
        OSError,
    )


@dataclass(frozen=True)
class Connected(ConnectionSettings):
    """ConnectionSettings with the configs they make: the base of a process's settings class
    (the worker's, the webhook dispatcher's), so each reads Redis's place the same way."""

    @property
    def redis_config(self) -> RedisConfig:
        return RedisConfig(self.redis_url, self.redis_sentinel_master, self.redis_key_prefix)

    @property
    def result_config(self) -> ResultStoreConfig:
        """Where results are stored, the events stream with them (validated; raises
        RedisConfigError)."""
        return ResultStoreConfig.resolve(
            self.redis_config, self.result_url, self.result_sentinel_master
        )
