"""The producer API: submit sources, read results by task id.

Tasks are sent by name, so this module never imports the worker or torch. Results are read
straight from the Redis keys the worker's result backend writes (the same way an app in any
other language would), which lets one MGET poll thousands of jobs at once.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import IO, Any, Protocol

import redis
from celery import Celery
from kombu.exceptions import BatchPublishError, OperationalError
from redis.exceptions import RedisClusterException

from core import objects, tenants
from core.connections import (
    RedisConfig,
    RedisConfigError,
    ResultStoreConfig,
    is_cluster_client,
    mget,
    result_store_errors,
)
from core.contract import (
    BULK_TASK_NAME,
    DEFAULT_QUEUE,
    DEFAULT_TOP_K,
    MAX_BULK_IMAGES,
    MAX_PRIORITY,
    MIN_PRIORITY,
    TASK_NAME,
    source_problem,
)
from core.errors import (
    BrokerUnavailable,
    ConfigError,
    Forbidden,
    InvalidSource,
    JobFailed,
    ProducerError,
    RedisFull,
    ResultTimeout,
    TenantQuotaExceeded,
    UploadTooLarge,
)
from core.keys import UPLOAD_KEY_PREFIX, upload_key
from core.lifecycle import (
    DEADLINE_HEADER,
    GROUP_HEADER,
    TENANT_HEADER,
    WEBHOOK_HEADER,
    upload_source,
)
from core.memory import is_out_of_memory, read_memory
from core.models import Registry, queue_for
from core.redaction import display_url
from core.settings import SettingError, UploadSettings, load
from core.states import FINAL_STATES, SUCCESS, failure_of
from core.webhooks import check_webhook
from producer import events, groups
from producer.cancel import MAX_ID_CHARS, CancelResult, deadline_at, valid_id
from producer.cancel import cancel as cancel_jobs
from producer.limits import Admission

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.5
_MGET_CHUNK = 500
# Client.wait reads at most twice this many result keys per poll (see `wait`), and polls at
# the fastest rate only while each poll finds at least _WAIT_ENOUGH finished jobs.
_WAIT_WINDOW = 128
_WAIT_ENOUGH = 8
# Messages per pipelined publish round trip (submit_many).
_PUBLISH_BATCH = 200
# Sources per submit while a prefix is listed: sent as they come, never held whole.
_LISTING_WINDOW = 4096
# Client.wait subscribes to the result channels of at most this many jobs.
_LISTEN_AT_MOST = 64
DEFAULT_BULK_SIZE = 64
# Well under the workers' MAX_MESSAGE_BYTES (1 MiB by default), whatever the sources' lengths.
_BULK_MAX_SOURCE_CHARS = 256 * 1024
# What `submit` takes: a URL or path, or an image's bytes (or a binary file to read them from),
# which travel through Redis as an upload (core.lifecycle).
Source = str | bytes | IO[bytes]


@dataclass(frozen=True)
class Outcome:
    """What is known about one job: its state, and its result or error once it has ended."""

    task_id: str
    state: str
    result: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == SUCCESS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.task_id, "state": self.state}
        if self.result is not None:
            out["result"] = self.result
        if self.error_type is not None:
            out["error"] = {"type": self.error_type, "message": self.error_message}
        return out

    def unwrap(self) -> dict[str, Any]:
        """The result of a successful job; raises JobFailed for a failed one."""
        if self.ok and self.result is not None:
            return self.result
        raise JobFailed(self.task_id, self.error_type or self.state, self.error_message or "")


def parse_meta(task_id: str, raw: bytes | str | None) -> Outcome:
    """Turn the JSON in `celery-task-meta-<id>` (or its absence) into an Outcome."""
    if raw is None:
        return Outcome(task_id, "PENDING")
    meta = json.loads(raw)
    state = str(meta.get("status", "PENDING"))
    result = meta.get("result")
    if state == SUCCESS:
        return Outcome(task_id, state, result=result, meta=meta)
    if state in ("FAILURE", "REVOKED", "RETRY"):
        error_type, message = failure_of(meta, state) or (state, "")
        return Outcome(task_id, state, error_type=error_type, error_message=message, meta=meta)
    return Outcome(task_id, state, meta=meta)


def make_celery(config: RedisConfig) -> Celery:
    """A send-only Celery app speaking the worker's protocol (JSON, task by name).

    It has no result backend on purpose: results are read straight from Redis (see `_fetch`),
    and a Redis backend would open a pub/sub connection for every task sent. Publishing is a
    plain LPUSH, so kombu's own redis:// and sentinel:// transports serve; workers consume with
    the project's transport (worker/broker).
    """
    app = Celery("imgqueue-producer", broker=config.url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=DEFAULT_QUEUE,
        broker_connection_retry_on_startup=True,
        task_publish_retry=True,
        broker_transport_options=config.broker_transport_options(),
    )
    return app


def check_priority(priority: int | None) -> int | None:
    """None, or an int within 0 (highest) .. 9 (lowest); raises ValueError otherwise."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an int, got {type(priority).__name__}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be within {MIN_PRIORITY} (highest) .. {MAX_PRIORITY} (lowest), "
            f"got {priority}"
        )
    return priority


def route(queue: str, model: str | None, *, queue_given: bool = True) -> str:
    """The queue a submit goes to: `model`'s (core.models.queue_for) when one is named,
    else `queue`. Naming both is fine when they agree; else ValueError (BadModelName for a
    malformed name)."""
    if model is None:
        return queue
    target = queue_for(model)
    if queue_given and queue != target:
        raise ValueError(
            f"queue {queue!r} and model {model!r} disagree: model {model!r} is served on queue "
            f"{target!r}; give one of them"
        )
    return target


class RedisOptions(Protocol):
    """Where Redis is, as `Client.from_settings` reads it (None: from the environment)."""

    @property
    def redis_url(self) -> str | None: ...
    @property
    def sentinel_master(self) -> str | None: ...
    @property
    def key_prefix(self) -> str | None: ...
    @property
    def result_url(self) -> str | None: ...
    @property
    def result_sentinel_master(self) -> str | None: ...


class Client:
    """Submit image sources for classification and collect their results."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        sentinel_master: str | None = None,
        key_prefix: str | None = None,
        bulk_size: int = DEFAULT_BULK_SIZE,
        result_url: str | None = None,
        result_sentinel_master: str | None = None,
        upload_max_bytes: int | None = None,
        upload_ttl_s: int | None = None,
        upload_url: str | None = None,
    ) -> None:
        """`redis_url`, `sentinel_master` and `key_prefix` default to REDIS_URL,
        REDIS_SENTINEL_MASTER and REDIS_KEY_PREFIX (see core.connections). `bulk_size`:
        images per message in `submit_many` (1: one `classify` message per image).
        `result_url` (default RESULT_URL, else the broker's) is where results are read, a
        Redis Cluster included (`redis-cluster://host:port,...`), with
        `result_sentinel_master` (default RESULT_SENTINEL_MASTER) for a sentinel:// one.
        `upload_max_bytes` (default UPLOAD_MAX_BYTES, else 20 MiB) caps each image submitted as
        bytes; `upload_ttl_s` (default UPLOAD_TTL_S, else 24 h) is how long its bytes wait in
        Redis for a worker. `upload_url` (`s3://bucket/prefix`, `gs://`, `az://`): bytes are
        PUT to `<prefix>/<task id>` there instead, and that URL is the job's source (the
        objects stay: a lifecycle rule expires them; docs/objects.md)."""
        if not 1 <= bulk_size <= MAX_BULK_IMAGES:
            raise ProducerError(f"bulk_size must be within 1..{MAX_BULK_IMAGES}")
        self.bulk_size = bulk_size
        self.upload_max_bytes, self.upload_ttl_s = _upload_limits(upload_max_bytes, upload_ttl_s)
        self.upload_url = _upload_prefix(upload_url)
        try:
            self.config = RedisConfig.from_env(
                url=redis_url, sentinel_master=sentinel_master, key_prefix=key_prefix
            )
            self.result_config = ResultStoreConfig.from_env(
                url=result_url, sentinel_master=result_sentinel_master, broker=self.config
            )
        except RedisConfigError as exc:  # a usage error (imgqueue exits 2), not an outage
            raise ConfigError(str(exc)) from exc
        self.redis_url = self.config.url
        self.queue = queue
        self.celery = make_celery(self.config)
        self.redis = self.config.client()  # the broker
        # The result store's client (a RedisCluster on a cluster), made on first use.
        self._results: Any = self.redis if self.result_config == _same(self.config) else None
        # Queue depth limits an operator set (producer.limits), cached a few seconds.
        self.admission = Admission(self.redis, self.config)
        # The models workers registered (core.models), cached a few seconds.
        self.models = Registry(self.redis, self.config)

    @classmethod
    def from_settings(cls, settings: RedisOptions, **kwargs: Any) -> Client:
        """A Client on the Redis options of `settings`: the command line's (`--redis-url`,
        ...) or the gateway's settings; None leaves each to its environment variable.
        `kwargs` as for the constructor."""
        return cls(
            settings.redis_url,
            sentinel_master=settings.sentinel_master,
            key_prefix=settings.key_prefix,
            result_url=settings.result_url,
            result_sentinel_master=settings.result_sentinel_master,
            **kwargs,
        )

    @property
    def results(self) -> Any:
        """The result store's redis-py client; `self.redis` is the broker's."""
        if self._results is None:
            try:
                self._results = self.result_config.client()
            except RedisClusterException as exc:  # no node answered with the slots
                raise BrokerUnavailable(
                    f"cannot reach the result store at {self.result_config.safe_url()}: {exc}"
                ) from exc
        return self._results

    def close(self) -> None:
        self.redis.close()
        if self._results is not None and self._results is not self.redis:
            self._results.close()
        self.celery.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submitting --------------------------------------------------------------------------

    def submit(
        self,
        source: Source,
        *,
        top_k: int = DEFAULT_TOP_K,
        queue: str | None = None,
        priority: int | None = None,
        model: str | None = None,
        webhook: str | None = None,
        deadline: float | datetime | None = None,
        tenant: tenants.Tenant | None = None,
    ) -> str:
        """Enqueue one source (URL or path under the worker's IMAGE_ROOT), or an image's bytes
        (`bytes`, or a binary file object such as `open(path, "rb")`, read here); returns its
        task id. Bytes are stored in Redis for the job (see `submit_many`).

        `queue` defaults to the client's queue; `priority` is 0 (highest, also the default
        when None) to 9 (lowest). `model` routes to that model's workers (queue `model.<name>`;
        "" is the default model, on `celery`), and raises UnknownModel, sending nothing, when
        no worker of it has registered. `webhook`, `deadline`, `tenant`: see `submit_many`.
        InvalidSource for an object-store prefix (`s3://bucket/photos/`): `submit_many` lists it.
        """
        if isinstance(source, str) and objects.is_prefix(source):
            raise InvalidSource(source, 0, "a prefix names many objects: submit_many lists it")
        ids = self.submit_many(
            [source],
            top_k=top_k,
            queue=queue,
            priority=priority,
            model=model,
            webhook=webhook,
            deadline=deadline,
            tenant=tenant,
        )
        return ids[0]

    def submit_many(
        self,
        sources: Iterable[Source],
        *,
        top_k: int = DEFAULT_TOP_K,
        queue: str | None = None,
        priority: int | None = None,
        bulk_size: int | None = None,
        model: str | None = None,
        group: bool = False,
        webhook: str | None = None,
        deadline: float | datetime | None = None,
        tenant: tenants.Tenant | None = None,
        task_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Enqueue many sources over one connection; returns their task ids in order.

        `group=True` makes them one group (producer.groups), written to the result store
        before any message is sent: the list returned is then a `GroupIds`, whose `group_id`
        `group()`, `group_results()` and `imgqueue status GROUP` take, and whose last job to
        end puts one `kind=group` event on the events stream (`events()`).

        `webhook`: an http(s) URL the webhook dispatcher (`python -m services.webhooks`) POSTs
        each job's result to when it ends, signed (docs/lifecycle.md); with `group=True`, the
        group's summary once its last job ends instead. Raises InvalidWebhook (a ValueError),
        sending nothing, for a URL that is not http(s), has no host, or holds a password.

        `deadline`: seconds from now (int or float), or a datetime (naive: local time). A job
        no worker has started by then ends REVOKED with the error type `Expired`, never
        fetched nor inferred (producer/cancel.py); ValueError for anything else, a datetime
        already past included.

        Raises InvalidSource (a ValueError), sending nothing, for a source outside the
        contract (core.contract.source_problem: empty or blank, over MAX_SOURCE_CHARS
        characters, a control character), wherever it is among `sources`.

        Image bytes (`bytes`, or a binary file object, read to its end here) may stand among
        the sources: each is stored on the broker's Redis for its job (`imgqueue:upload:<id>`,
        expiring after `upload_ttl_s`), all in one round trip before any message is sent, and
        its job's source is `upload:<id>` (with the client's `upload_url`, each is PUT to its
        object there instead, and the job's source is that object's URL). UploadTooLarge (a
        ValueError) for one over `upload_max_bytes`, InvalidSource for an empty one, sending
        nothing. Where sending fails, the bytes of the jobs not sent are deleted.

        Up to `bulk_size` (default: the client's) sources travel in one `classify_many`
        message; each still gets its own task id, result and state, read as for `submit`.
        `model` routes to that model's queue (see `submit`); with `queue` too, both must name
        the same queue (ValueError otherwise).

        `tenant` (core.tenants.Tenant, as a gateway's Keyring gives): the jobs are that
        tenant's. Their ids are `tenant.new_id()`, every message carries TENANT_HEADER, a group
        records the tenant; raises Forbidden for a queue or model the tenant may not use, and
        TenantQuotaExceeded when they would take its unfinished jobs past its `max_queued`
        (core.tenants.reserve), sending nothing either way.

        `task_ids`: the ids to use, one per source, instead of new ones (`imgqueue batch`'s
        `<batch>-<index>`): sending a job again under its own id runs it at most once more,
        and its stored final state is never replaced. ValueError, sending nothing, for a count
        that differs from the sources', a repeated id, one a worker would refuse (empty, over
        MAX_ID_CHARS characters, not printable), or with a `tenant` (whose ids it makes).

        Raises UnknownModel, before sending anything, when no worker of `model` has registered
        (core.models); QueueFull when the messages would take the queue past its depth
        limit (producer.limits); RedisFull when Redis is at maxmemory (noeviction);
        BrokerUnavailable when it cannot be reached.

        Object-store prefixes (`s3://bucket/photos/`, `gs://`, `az://`: a URL ending in "/")
        among `sources` are listed page by page (core.objects, with the producer's own
        credentials and S3_ENDPOINT_URL) and the images under them (by extension, as a
        directory's) submitted in their place, in the store's order; one object's URL is a
        source as it is. A listing is never held whole: its jobs are sent every 4096
        sources as the listing goes, so an error part way (ObjectNotFound for
        a bucket that does not exist, ObjectAccessDenied, ObjectStoreError, or any above)
        carries in `sent` the ids already sent. `group=True` and `task_ids` plan every id
        first, so they hold the listing.
        """
        given: dict[str, Any] = dict(
            top_k=top_k,
            queue=queue,
            priority=priority,
            bulk_size=bulk_size,
            model=model,
            group=group,
            webhook=webhook,
            deadline=deadline,
            tenant=tenant,
            task_ids=task_ids,
        )
        expansion = objects.Expansion(sources)
        if group or task_ids is not None:  # every id is planned before the first is sent
            return self._submit_all(list(expansion), **given)
        ids: list[str] = []
        try:
            for window in _windows(expansion, _LISTING_WINDOW):
                ids += self._submit_all(window, **given)
        except Exception as exc:
            if ids:  # earlier windows' jobs run: the caller must be able to find them
                exc.sent = [*ids, *getattr(exc, "sent", [])]  # type: ignore[attr-defined]
            raise
        return ids

    def _submit_all(
        self,
        sources: Iterable[Source],
        *,
        top_k: int = DEFAULT_TOP_K,
        queue: str | None = None,
        priority: int | None = None,
        bulk_size: int | None = None,
        model: str | None = None,
        group: bool = False,
        webhook: str | None = None,
        deadline: float | datetime | None = None,
        tenant: tenants.Tenant | None = None,
        task_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """submit_many's sources, prefixes already listed: every id is planned and every
        source checked before anything is sent."""
        plan = self._plan(
            sources,
            queue=queue,
            priority=priority,
            bulk_size=bulk_size,
            model=model,
            group=group,
            webhook=webhook,
            deadline=deadline,
            tenant=tenant,
            task_ids=task_ids,
        )
        return self._send_plan(plan, top_k, model, tenant)

    def _plan(
        self,
        sources: Iterable[Source],
        *,
        queue: str | None,
        priority: int | None,
        bulk_size: int | None,
        model: str | None,
        group: bool,
        webhook: str | None,
        deadline: float | datetime | None,
        tenant: tenants.Tenant | None,
        task_ids: Sequence[str] | None,
    ) -> _Plan:
        """The options and sources checked, and every id and message planned; nothing sent."""
        check_priority(priority)
        hook = None if webhook is None else check_webhook(webhook)
        at = deadline_at(deadline)
        size = self.bulk_size if bulk_size is None else bulk_size
        if not 1 <= size <= MAX_BULK_IMAGES:
            raise ProducerError(f"bulk_size must be within 1..{MAX_BULK_IMAGES}")
        target = route(queue or self.queue, model, queue_given=bool(queue))
        if tenant is not None:
            _check_tenant(tenant, target, model)
        # The contract's rule, as workers apply it: a bad source costs nothing sent.
        given = _read_sources(sources, self.upload_max_bytes)
        # Every id is planned here, once, before anything is sent: a group lists them before
        # any of its jobs can end, and an upload's source names its job's id.
        new_id = tenant.new_id if tenant is not None else _new_id
        if task_ids is None:
            planned_ids = [new_id() for _ in given]
        else:
            planned_ids = _given_ids(task_ids, given, tenant)
        uploads = {t: s for t, s in zip(planned_ids, given, strict=True) if isinstance(s, bytes)}
        listed = [
            self._upload_source(t) if t in uploads else str(s)
            for t, s in zip(planned_ids, given, strict=True)
        ]
        single = size == 1 or len(listed) == 1
        # Every message is known before the first is sent: a refused call sends nothing.
        messages = [[source] for source in listed] if single else list(_chunks(listed, size))
        group_id = groups.new_id() if group and messages else None
        options: dict[str, Any] = {"queue": target}
        if priority is not None:
            options["priority"] = priority
        headers = _message_headers(group_id, hook, at, tenant)
        if headers:
            options["headers"] = headers
        planned = _shaped(planned_ids, messages)
        return _Plan(
            target, options, planned_ids, uploads, messages, planned, single, group_id, hook
        )

    def _send_plan(
        self, plan: _Plan, top_k: int, model: str | None, tenant: tenants.Tenant | None
    ) -> list[str]:
        """Check the model and the queue's room, reserve the tenant's quota, store the uploads
        and the group, then publish. Where that fails, the error tells what went out (`sent`,
        `uncertain`), and the quota and uploads of the jobs never sent are given back."""
        ids: list[str] = []
        reserved: list[str] = []
        in_flight: list[str] = []
        messages, planned = plan.messages, plan.planned
        try:
            if messages and model is not None:
                self.models.check(model)
            if messages:
                self.admission.check(plan.target, len(messages))
            if tenant is not None and messages:
                reserved = self._reserve(tenant, planned)
            if plan.uploads:  # stored before any message, so no worker looks for them in vain
                self._store_uploads(plan.uploads)
            if plan.group_id is not None:
                owner = tenant.name if tenant is not None else ""
                self._create_group(
                    plan.group_id, planned, plan.target, model, plan.hook or "", owner
                )
            with self.celery.producer_or_acquire() as producer:
                for start in range(0, len(messages), _PUBLISH_BATCH):
                    batch = slice(start, start + _PUBLISH_BATCH)
                    in_flight = [i for chunk in planned[batch] for i in chunk]
                    ids += self._send_group(
                        producer, messages[batch], plan.single, top_k, plan.options, planned[batch]
                    )
        except (OperationalError, redis.ConnectionError, redis.ResponseError, OSError) as exc:
            if plan.group_id is not None and not ids:
                self._discard_group(plan.group_id)
            error = self._send_error(exc, ids, in_flight, plan.group_id)
            if error is exc:
                raise
            raise error from exc
        finally:
            if tenant is not None and len(ids) < len(reserved):
                # Whatever stopped the send, jobs never sent must not count against the quota.
                sent = set(ids)
                self._release(tenant, [i for i in reserved if i not in sent])
            if plan.uploads and len(ids) < len(plan.ids):  # their jobs never went: none reads them
                sent = set(ids)
                self._discard_uploads([t for t in plan.uploads if t not in sent])
        return ids if plan.group_id is None else groups.GroupIds(ids, plan.group_id)

    def _send_error(
        self, exc: Exception, ids: list[str], in_flight: list[str], group_id: str | None
    ) -> Exception:
        """What a failed send raises: RedisFull, a refusal as Redis gave it, else
        BrokerUnavailable; carrying `sent` (what went out before the failure: its jobs run, so
        the caller must be able to find them; `imgqueue submit` prints them), `uncertain` (the
        batch being sent when it failed: some of it may have reached Redis) and `group_id`."""
        # kombu wraps connection errors, and Redis' OOM refusal, in OperationalError.
        if is_out_of_memory(exc):
            error: Exception = self.full_error()
        elif isinstance(exc, redis.ResponseError):
            error = exc
        else:
            error = BrokerUnavailable(f"cannot reach Redis at {self._safe_url()}: {exc}")
        done = set(ids)
        error.sent = list(ids)  # type: ignore[attr-defined]
        error.uncertain = [i for i in in_flight if i not in done]  # type: ignore[attr-defined]
        error.group_id = group_id if ids else None  # type: ignore[attr-defined]
        return error

    def _upload_source(self, task_id: str) -> str:
        """An upload's source: its object's URL under `upload_url`, else `upload:<id>`."""
        return f"{self.upload_url}/{task_id}" if self.upload_url else upload_source(task_id)

    def _store_uploads(self, uploads: dict[str, bytes]) -> None:
        """Each upload's bytes at its key, with UPLOAD_TTL_S, in one pipelined round trip; or
        each PUT to its object under `upload_url`."""
        if self.upload_url:
            for task_id, data in uploads.items():
                objects.put_bytes(self._upload_source(task_id), data)
            return
        pipe = self.redis.pipeline(transaction=False)
        for task_id, data in uploads.items():
            pipe.set(self.config.key_prefix + upload_key(task_id), data, ex=self.upload_ttl_s)
        try:
            pipe.execute()
        except redis.exceptions.NoPermissionError as exc:
            pattern = self.config.key_prefix + UPLOAD_KEY_PREFIX + "*"
            raise ProducerError(
                f"this Redis user may not store uploads ({pattern}): "
                f"{exc} (deploy/redis.conf's producer user may)"
            ) from exc
        except redis.TimeoutError as exc:  # not a ConnectionError, yet as much an outage
            raise BrokerUnavailable(f"cannot reach Redis at {self._safe_url()}: {exc}") from exc

    def _discard_uploads(self, task_ids: list[str]) -> None:
        """Best effort: uploads whose jobs were never sent (they would expire anyway)."""
        if task_ids and self.upload_url:
            for task_id in task_ids:
                with contextlib.suppress(ProducerError):
                    objects.delete(self._upload_source(task_id))
        elif task_ids:
            with contextlib.suppress(redis.RedisError, OSError):
                self.redis.delete(*[self.config.key_prefix + upload_key(t) for t in task_ids])

    def full_error(self) -> RedisFull:
        """RedisFull with INFO memory's numbers, where this user may read them."""
        try:
            memory = read_memory(self.redis)
        except (redis.RedisError, OSError):
            memory = None
        if memory is None:
            return RedisFull(None, None)
        return RedisFull(memory.used_memory, memory.maxmemory, memory.maxmemory_policy)

    def _reserve(self, tenant: tenants.Tenant, planned: list[list[str]]) -> list[str]:
        """Count the planned ids against the tenant's max_queued; TenantQuotaExceeded when
        refused. Returns the ids reserved."""
        ids = [task_id for chunk in planned for task_id in chunk]
        admitted, queued = tenants.reserve(self.redis, self.config, tenant, ids)
        if not admitted:
            raise TenantQuotaExceeded(tenant.name, queued, tenant.max_queued or 0, len(ids))
        return ids

    def _release(self, tenant: tenants.Tenant, ids: list[str]) -> None:
        """Best effort: an id left behind stops counting after JOB_COUNT_TTL_S anyway."""
        with contextlib.suppress(redis.RedisError, OSError):
            tenants.release(self.redis, self.config, tenant.name, ids)

    def _send_group(
        self,
        producer: Any,
        group: list[list[str]],
        single: bool,
        top_k: int,
        options: dict[str, Any],
        planned: list[list[str]] | None = None,
    ) -> list[str]:
        """One pipelined round trip for up to _PUBLISH_BATCH messages (kombu's publish batch).

        A batch whose flush fails leaves its delivery uncertain: the group goes again one
        message at a time with kombu's publish retries, under the same task ids. At least
        once, as a publish retry is: a duplicate runs under the same id, and a final result
        is never replaced.
        """
        ids = planned or [[str(uuid.uuid4()) for _ in chunk] for chunk in group]
        try:
            with producer.batch(_PUBLISH_BATCH):
                self._send(producer, group, ids, single, top_k, options)
        except BatchPublishError:
            self._send(producer, group, ids, single, top_k, options)
        return [task_id for chunk in ids for task_id in chunk]

    def _send(
        self,
        producer: Any,
        group: list[list[str]],
        ids: list[list[str]],
        single: bool,
        top_k: int,
        options: dict[str, Any],
    ) -> None:
        for chunk, chunk_ids in zip(group, ids, strict=True):
            if single:
                self._send_one(producer, chunk[0], chunk_ids[0], top_k, options)
            else:
                self._send_bulk(producer, chunk, chunk_ids, top_k, options)

    def _send_one(
        self, producer: Any, source: str, task_id: str, top_k: int, options: dict[str, Any]
    ) -> None:
        options, headers = _headers(options)
        self.celery.send_task(
            TASK_NAME,
            args=[source],
            kwargs={"top_k": top_k},
            task_id=task_id,
            producer=producer,
            # Lets workers measure queue wait (imgqueue_queue_wait_seconds).
            headers={"sent_at": time.time(), **headers},
            # What Celery logs and Flower show instead of the arguments: no credentials or
            # signed query strings from the source.
            argsrepr=repr([display_url(source)]),
            **options,
        )

    def _send_bulk(
        self,
        producer: Any,
        sources: list[str],
        ids: list[str],
        top_k: int,
        options: dict[str, Any],
    ) -> None:
        images: list[dict[str, Any]] = [
            {"id": i, "source": source} for i, source in zip(ids, sources, strict=True)
        ]
        options, headers = _headers(options)
        deadline = headers.pop(DEADLINE_HEADER, None)
        if deadline is not None:
            for image in images:
                image["deadline"] = deadline
        self.celery.send_task(
            BULK_TASK_NAME,
            args=[images],
            kwargs={"top_k": top_k},
            producer=producer,
            # A header of a bulk message holds for each of its images (core.lifecycle).
            headers={"sent_at": time.time(), **headers},
            argsrepr=f"[{len(images)} images, first {display_url(sources[0])!r}]",
            **options,
        )

    # -- cancelling --------------------------------------------------------------------------

    def cancel(self, task_ids: Iterable[str]) -> CancelResult:
        """Cancel jobs that have not started, single or carried in a bulk message: each ends
        REVOKED with the error type `Cancelled`, never fetched nor inferred, whenever a worker
        takes its message (the cancel waits in Redis, across restarts and while no worker
        runs, 30 days at most). A job that has started finishes: it is listed `too_late`.
        See producer/cancel.py. Raises BrokerUnavailable, RedisFull, ProducerError (a Redis
        user that may not write cancels)."""
        return cancel_jobs(self, task_ids)

    # -- results -----------------------------------------------------------------------------

    def status(self, task_id: str) -> Outcome:
        """The job's current state, without waiting."""
        return self._fetch([task_id])[0]

    def result(self, task_id: str, *, timeout: float | None = 30.0) -> dict[str, Any]:
        """Wait for one job's result; raises JobFailed or ResultTimeout."""
        for outcome in self.wait([task_id], timeout=timeout):
            return outcome.unwrap()
        raise AssertionError("unreachable")

    def wait(
        self,
        task_ids: Iterable[str],
        *,
        timeout: float | None = None,
        reconnect_timeout: float = 60.0,
    ) -> Iterator[Outcome]:
        """Yield each job's Outcome as it finishes, in completion order.

        Raises ResultTimeout when `timeout` passes with jobs still unfinished, and
        BrokerUnavailable when Redis stays unreachable for `reconnect_timeout` seconds, or
        what answers is not Redis. Either has `unfinished`: the Outcome last read of each job
        not yielded (PENDING where none was), in the order given.
        """
        pending = list(dict.fromkeys(task_ids))
        deadline = None if timeout is None else time.monotonic() + timeout
        unfinished = {task_id: Outcome(task_id, "PENDING") for task_id in pending}
        listener = None
        try:
            # A few jobs: their result channels wake the wait as each is stored (workers
            # publish only to channels someone listens on), so a lone job is seen at once, not
            # at the next poll; polling stays, for what a wake-up can miss.
            if len(pending) <= _LISTEN_AT_MOST:
                listener = self._listen(pending)
            yield from self._wait(
                pending, deadline, timeout, reconnect_timeout, listener, unfinished
            )
        except (ResultTimeout, BrokerUnavailable) as exc:
            exc.unfinished = tuple(unfinished.values())
            raise
        except (redis.RedisError, RedisClusterException) as exc:  # a protocol error: not Redis
            error = self._store_unavailable(exc)
            error.unfinished = tuple(unfinished.values())
            raise error from exc
        finally:
            if listener is not None:
                listener.close()

    def _wait(
        self,
        pending: list[str],
        deadline: float | None,
        timeout: float | None,
        reconnect_timeout: float,
        listener: Any,
        unfinished: dict[str, Outcome],
    ) -> Iterator[Outcome]:
        delay = _POLL_MIN_S
        down_since: float | None = None
        down: BrokerUnavailable | None = None  # why the last read failed
        cursor = 0  # where the next look at the jobs past the window starts
        while pending:
            # Bounded reads: the oldest jobs (which finish first) and a rotating slice of the
            # rest, so a poll costs Redis the same over 10 or 100,000 pending jobs.
            head, rest = pending[:_WAIT_WINDOW], pending[_WAIT_WINDOW:]
            if cursor >= len(rest):
                cursor = 0
            looked = head + rest[cursor : cursor + _WAIT_WINDOW]
            cursor += _WAIT_WINDOW
            try:
                outcomes = self._fetch(looked)
                down_since = down = None
            except BrokerUnavailable as exc:
                now = time.monotonic()
                down_since, down = down_since or now, exc
                if now - down_since > reconnect_timeout:
                    raise
                outcomes = []
            for outcome in outcomes:  # the last state read, for a wait that fails
                if outcome.done:
                    unfinished.pop(outcome.task_id, None)
                else:
                    unfinished[outcome.task_id] = outcome
            finished = [o for o in outcomes if o.done]
            if finished:
                done_ids = {o.task_id for o in finished}
                pending = [t for t in pending if t not in done_ids]
                yield from finished
            if deadline is not None and time.monotonic() >= deadline and pending:
                # Say why, where the store was down: a timeout alone would hide it.
                why = "" if down is None else f" ({down})"
                raise ResultTimeout(f"{len(pending)} job(s) unfinished after {timeout}s{why}")
            if not pending or (len(finished) >= _WAIT_ENOUGH and len(looked) < len(pending)):
                continue  # many finished: look at the next ones right away
            # Few finished per look: wait longer, so each read finds more; many: poll sooner.
            if len(finished) >= _WAIT_ENOUGH or (finished and len(pending) <= _WAIT_ENOUGH):
                delay = _POLL_MIN_S
            else:
                delay = min(delay * (1.5 if finished else 2), _POLL_MAX_S)
            sleep_for = delay if deadline is None else min(delay, deadline - time.monotonic())
            listener = _nap(listener, max(sleep_for, 0.0))

    def _listen(self, task_ids: list[str]) -> Any:
        """A subscription to the jobs' result channels, or None where there can be none (a
        cluster does not publish; a user without channel rights; Redis unreachable)."""
        if is_cluster_client(self.results):
            return None
        listener = self.results.pubsub(ignore_subscribe_messages=True)
        try:
            listener.subscribe(*[self.config.result_key(t) for t in task_ids])
        except (redis.RedisError, OSError):
            listener.close()
            return None
        return listener

    def _fetch(self, task_ids: list[str]) -> list[Outcome]:
        out: list[Outcome] = []
        try:
            for i in range(0, len(task_ids), _MGET_CHUNK):
                chunk = task_ids[i : i + _MGET_CHUNK]
                raws = mget(self.results, [self.config.result_key(t) for t in chunk])
                out.extend(parse_meta(t, r) for t, r in zip(chunk, raws, strict=True))
        except _RESULT_ERRORS as exc:
            where = self.result_config.safe_url()
            raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
        return out

    def _safe_url(self) -> str:
        return self.config.safe_url()

    # -- groups and events -------------------------------------------------------------------

    def group(self, group_id: str) -> groups.GroupStatus:
        """A group's counts (queued, running, succeeded, failed, cancelled), progress and ETA;
        raises UnknownGroup when there is no such group (or it expired with its results)."""
        try:
            return groups.status(
                self.results,
                group_id,
                self.result_config.key_prefix,
                lambda ids: [o.state for o in self._fetch(ids)],
            )
        except _RESULT_ERRORS as exc:
            raise self._store_unavailable(exc) from exc

    def group_ids(self, group_id: str) -> list[str]:
        """A group's task ids, in submit order."""
        self.group(group_id)  # UnknownGroup, rather than an empty list
        try:
            prefix = self.result_config.key_prefix
            return [i for page in groups.iter_ids(self.results, group_id, prefix) for i in page]
        except _RESULT_ERRORS as exc:
            raise self._store_unavailable(exc) from exc

    def group_results(self, group_id: str) -> Iterator[Outcome]:
        """Every job of a group as it stands now (finished or not), in submit order, read a
        page of ids at a time."""
        groups.read_meta(self.results, group_id, self.result_config.key_prefix)
        try:
            prefix = self.result_config.key_prefix
            for page in groups.iter_ids(self.results, group_id, prefix):
                yield from self._fetch(page)
        except _RESULT_ERRORS as exc:
            raise self._store_unavailable(exc) from exc

    def events(self, since: str = "$", *, timeout: float | None = None) -> Iterator[Any]:
        """Completion events (producer.events.Event), in order, as workers append them: one
        per job that ends (SUCCESS, FAILURE, REVOKED; `kind` "job") and one per group whose
        last job ended (`kind` "group"). `since`: "$" (default) for those from now on, "0" for
        every one the stream still holds (EVENTS_MAXLEN), or an event's `entry_id` to go on
        after it. Blocks for the next; ends once `timeout` seconds pass without one (None:
        never). "$" is resolved at this call, so events of jobs submitted between it and the
        first iteration are not missed. Raises BrokerUnavailable when the result store cannot
        be reached."""
        try:
            found = events.follow(
                self.results, self.result_config.key_prefix, since, timeout=timeout
            )
        except _RESULT_ERRORS as exc:
            raise self._store_unavailable(exc) from exc
        return self._guarded(found)

    def _guarded(self, found: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from found
        except _RESULT_ERRORS as exc:
            raise self._store_unavailable(exc) from exc

    def _create_group(
        self,
        group_id: str,
        planned: list[list[str]],
        queue: str,
        model: str | None,
        webhook: str = "",
        tenant: str = "",
    ) -> None:
        ids = [task_id for chunk in planned for task_id in chunk]
        try:
            groups.create(
                self.results,
                group_id,
                ids,
                key_prefix=self.result_config.key_prefix,
                queue=queue,
                model=model or "",
                webhook=webhook,
                tenant=tenant,
            )
        except redis.ResponseError as exc:
            if is_out_of_memory(exc):
                raise self.full_error() from exc
            raise
        except _RESULT_ERRORS as exc:
            raise self._store_unavailable(exc) from exc

    def _discard_group(self, group_id: str) -> None:
        """Best effort: a group none of whose messages went out (it would expire anyway)."""
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
            groups.discard(self.results, group_id, self.result_config.key_prefix)

    def _store_unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"cannot reach the result store at {self.result_config.safe_url()}: {exc}"
        )


def _new_id() -> str:
    return str(uuid.uuid4())


def _given_ids(
    ids: Sequence[str], given: list[str | bytes], tenant: tenants.Tenant | None
) -> list[str]:
    """`submit_many(task_ids=)` checked: ValueError for any a worker would refuse."""
    out = list(ids)
    if tenant is not None:
        raise ValueError("task_ids cannot be given with a tenant: its jobs' ids are the tenant's")
    if len(out) != len(given):
        raise ValueError(f"{len(out)} task_ids given for {len(given)} sources")
    if len(set(out)) != len(out):
        raise ValueError("task_ids must not repeat")
    for task_id in out:
        if not valid_id(task_id):
            raise ValueError(
                f"task id {task_id!r} must be a printable string of 1..{MAX_ID_CHARS} characters"
            )
    return out


def _check_tenant(tenant: tenants.Tenant, queue: str, model: str | None) -> None:
    """Forbidden, before anything is sent, for a queue or model the tenant may not use."""
    if not tenant.may_use_queue(queue):
        raise Forbidden(tenant.name, "queue", queue, tenant.queues)
    if not tenant.may_use_model(model):
        raise Forbidden(tenant.name, "model", model or "", tenant.models)


def _headers(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`send_task` options, and the message headers (core.lifecycle) that ride in them."""
    if "headers" not in options:
        return options, {}
    rest = dict(options)
    return rest, dict(rest.pop("headers"))


def _nap(listener: Any, seconds: float) -> Any:
    """Sleep up to `seconds`, waking early when a result is published; returns the listener,
    or None once it failed (the wait then just polls)."""
    if listener is None:
        time.sleep(seconds)
        return None
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            message = listener.get_message(timeout=left)
            if message is not None and message.get("type") == "message":
                return listener
    except (redis.RedisError, OSError):
        listener.close()
        return None
    return listener


def _upload_limits(max_bytes: int | None, ttl_s: int | None) -> tuple[int, int]:
    """The uploads' size cap and TTL: the arguments where given, else UPLOAD_MAX_BYTES and
    UPLOAD_TTL_S as their declarations read them (core.settings.UploadSettings)."""
    try:
        declared = load(UploadSettings)
        given = replace(
            declared,
            upload_max_bytes=declared.upload_max_bytes if max_bytes is None else max_bytes,
            upload_ttl_s=declared.upload_ttl_s if ttl_s is None else ttl_s,
        )
        for name in ("upload_max_bytes", "upload_ttl_s"):
            value = getattr(given, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingError(f"{name} must be an integer, got {value!r}")
        given.validate()
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    return given.upload_max_bytes, given.upload_ttl_s


def _read_sources(sources: Iterable[Source], limit: int) -> list[str | bytes]:
    """Each source as a string (checked against the contract, core.contract.source_problem)
    or an upload's bytes (a file object read here, no further than `limit` + 1 bytes). Raises
    InvalidSource or UploadTooLarge for the first that is wrong: nothing is sent then."""
    out: list[str | bytes] = []
    for index, source in enumerate(sources):
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            if len(data) > limit:
                raise UploadTooLarge(index, len(data), limit)
        elif not isinstance(source, str) and hasattr(source, "read"):
            data = _read_file(source, index, limit)
        else:
            text = str(source)
            problem = source_problem(text)
            if problem is not None:
                raise InvalidSource(text, index, problem)
            out.append(text)
            continue
        if not data:
            raise InvalidSource("<upload>", index, "the upload is empty (0 bytes)")
        out.append(data)
    return out


def _read_file(file: IO[bytes], index: int, limit: int) -> bytes:
    """A binary file's bytes; UploadTooLarge once it passes `limit` (read no further)."""
    buf = bytearray()
    while len(buf) <= limit:
        chunk: object = file.read(limit + 1 - len(buf))  # a raw file may return less
        if isinstance(chunk, str):
            raise InvalidSource("<upload>", index, "a file opened in text mode: open it with 'rb'")
        if not isinstance(chunk, bytes | bytearray | memoryview) or not chunk:
            break
        buf += chunk
    if len(buf) > limit:
        raise UploadTooLarge(index, None, limit)
    return bytes(buf)


def _upload_prefix(url: str | None) -> str:
    """`upload_url` without its trailing "/"; ConfigError for one that is not an object URL."""
    if not url:
        return ""
    try:
        objects.parse(url)
    except ValueError as exc:
        raise ConfigError(f"upload_url: {exc}") from None
    return url.rstrip("/")


def _windows(expansion: objects.Expansion[Source], size: int) -> Iterator[list[Source | str]]:
    """The sources in one list, or once a prefix is met, in lists of `size` as listed."""
    window: list[Source | str] = []
    yielded = False
    for source in expansion:
        window.append(source)
        if expansion.listed and len(window) >= size:
            yield window
            window, yielded = [], True
    if window or not yielded:
        yield window


@dataclass(frozen=True)
class _Plan:
    """One submit, every message known before the first is sent (Client._plan)."""

    target: str  # the queue
    options: dict[str, Any]  # kombu's publish options: queue, priority, headers
    ids: list[str]  # one per source, in order
    uploads: dict[str, bytes]  # task id -> the image bytes its job reads
    messages: list[list[str]]  # each message's sources
    planned: list[list[str]]  # each message's task ids
    single: bool  # one `classify` message per source, else `classify_many`
    group_id: str | None
    hook: str | None  # the checked webhook URL


def _message_headers(
    group_id: str | None, hook: str | None, at: float | None, tenant: tenants.Tenant | None
) -> dict[str, Any]:
    """The messages' headers. A bulk message's hold for each of its images, but for the
    deadline: a single message's header, each image's entry in a bulk one."""
    headers: dict[str, Any] = {}
    if group_id is not None:
        headers[GROUP_HEADER] = group_id
    elif hook is not None:  # a group's webhook is in the group's metadata instead
        headers[WEBHOOK_HEADER] = hook
    if at is not None:
        headers[DEADLINE_HEADER] = at
    if tenant is not None:
        headers[TENANT_HEADER] = tenant.name
    return headers


def _shaped(ids: list[str], messages: list[list[str]]) -> list[list[str]]:
    """`ids` cut into runs as long as each message's sources."""
    out, start = [], 0
    for chunk in messages:
        out.append(ids[start : start + len(chunk)])
        start += len(chunk)
    return out


def _chunks(sources: list[str], size: int) -> Iterator[list[str]]:
    """Runs of at most `size` sources and about _BULK_MAX_SOURCE_CHARS characters."""
    chunk: list[str] = []
    chars = 0
    for source in sources:
        if chunk and (len(chunk) == size or chars + len(source) > _BULK_MAX_SOURCE_CHARS):
            yield chunk
            chunk, chars = [], 0
        chunk.append(source)
        chars += len(source)
    if chunk:
        yield chunk


# Reading results while their store is down or failing over (a cluster's errors included).
_RESULT_ERRORS: tuple[type[Exception], ...] = (*result_store_errors(), RedisClusterException)


def _same(broker: RedisConfig) -> ResultStoreConfig:
    """The result store that is the broker itself (RESULT_URL unset)."""
    return ResultStoreConfig(broker.url, broker.sentinel_master, broker.key_prefix)
