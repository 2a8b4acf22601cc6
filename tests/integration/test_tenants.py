"""Tenants without a worker: the Keyring, the quota, what a tenant may use, its ids and header
in the messages on Redis, the worker's store releasing an ended job, and the shipped gateway
user's rights. A real redis-server throughout (tests/system/test_tenant_keys.py: `imgqueue
keys` as a process)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context

from cli.exits import ExitStatus, status_for
from core.contract import BULK_TASK_NAME, TASK_NAME, result_key
from core.errors import BrokerUnavailable
from core.lifecycle import EVENTS_STREAM, TENANT_HEADER, upload_key, upload_source
from core.tenants import (
    KEY_TTL_S,
    Keyring,
    Tenant,
    create_key,
    jobs_key,
    queued,
    release,
)
from producer import Client, Forbidden, TenantQuotaExceeded
from tests.support.ports import free_port
from tests.support.redis_server import with_shipped_users
from tests.support.tenants import (
    CONFIG,
    r_fixture,  # noqa: F401  (the fixture `r`)
    url_fixture,  # noqa: F401  (the fixture `url`)
)
from tests.support.waiting import wait_for
from worker.backend import ResultBackend


def messages(r: redis.Redis, queue: str = "celery") -> list[dict[str, Any]]:
    """The messages waiting in a queue, oldest first."""
    raw: list[bytes] = r.lrange(queue, 0, -1)  # type: ignore[assignment]
    return [json.loads(m) for m in reversed(raw)]


def members(r: redis.Redis, tenant: str) -> set[str]:
    return {m.decode() for m in r.zrange(jobs_key(CONFIG, tenant), 0, -1)}  # type: ignore[union-attr]


# -- API keys: the keyring ---------------------------------------------------------------------


def test_the_keyring_sees_a_revoke_within_its_ttl(r: redis.Redis) -> None:
    key, _ = create_key(r, CONFIG, "acme", max_queued=3)
    ring = Keyring(r, CONFIG)
    tenant = ring.authenticate(key)
    assert tenant is not None and (tenant.name, tenant.max_queued) == ("acme", 3)
    assert ring.authenticate(key[:-1] + "x") is None
    assert ring.authenticate("not-a-key") is None
    from core.tenants import revoke

    assert [k.tenant for k in revoke(r, CONFIG, key)] == ["acme"]
    revoked = time.monotonic()
    wait_for(lambda: ring.authenticate(key) is None, KEY_TTL_S + 2, "the revoke to be seen")
    assert time.monotonic() - revoked <= KEY_TTL_S + 0.5


# -- submitting with a tenant -----------------------------------------------------------------


def test_ids_and_header_of_a_tenants_messages_on_redis(url: str, r: redis.Redis) -> None:
    acme = Tenant("acme")
    with Client(url) as client:
        single = client.submit("cat.jpg", tenant=acme)
        bulk = client.submit_many(["a.jpg", "b.jpg", "c.jpg"], tenant=acme, bulk_size=64)
        group = client.submit_many(["d.jpg", "e.jpg"], tenant=acme, group=True, bulk_size=1)
        plain = client.submit("f.jpg")
        assert client.group(group.group_id).tenant == "acme"
    assert all(acme.owns(i) for i in [single, *bulk, *group])
    assert not acme.owns(plain) and not Tenant("other").owns(single)
    sent = messages(r)
    assert [m["headers"].get(TENANT_HEADER) for m in sent] == ["acme"] * 4 + [None]
    assert sent[0]["headers"]["id"] == single
    assert sent[1]["headers"]["task"] == BULK_TASK_NAME
    body = json.loads(base64.b64decode(sent[1]["body"]))
    assert [image["id"] for image in body[0][0]] == bulk
    assert [m["headers"]["id"] for m in sent[2:4]] == list(group)
    # Each counts against the tenant until a worker ends it.
    assert members(r, "acme") == {single, *bulk, *group}
    assert queued(r, CONFIG, "acme") == 6


def test_the_quota_refuses_past_max_queued_and_counts_again_once_released(
    url: str, r: redis.Redis
) -> None:
    acme = Tenant("acme", max_queued=3)
    with Client(url) as client:
        first = client.submit_many(["a.jpg", "b.jpg"], tenant=acme, bulk_size=1)
        with pytest.raises(TenantQuotaExceeded) as refused:
            client.submit_many(["c.jpg", "d.jpg"], tenant=acme)
        assert "2 unfinished jobs" in str(refused.value)
        assert "max_queued 3" in str(refused.value)
        assert refused.value.retry_after > 0 and refused.value.adding == 2
        assert r.llen("celery") == 2 and members(r, "acme") == set(first)  # nothing sent
        assert client.submit("c.jpg", tenant=acme)  # the third fits
        release(r, CONFIG, "acme", first)  # as a worker does when they end
        assert len(client.submit_many(["d.jpg", "e.jpg"], tenant=acme, bulk_size=1)) == 2
        # Another tenant's quota is its own.
        assert client.submit("f.jpg", tenant=Tenant("other", max_queued=1))
    assert status_for(refused.value) == ExitStatus.QUEUE_FULL


def test_a_send_that_fails_releases_what_it_reserved(url: str, r: redis.Redis) -> None:
    acme = Tenant("acme", max_queued=5)
    # A group is written to the result store before its messages: one that is down fails the
    # submit after the reservation.
    gone = f"redis://127.0.0.1:{free_port()}/0"
    with Client(url, result_url=gone) as client, pytest.raises(BrokerUnavailable):
        client.submit_many(["a.jpg", "b.jpg"], tenant=acme, group=True)
    assert r.llen("celery") == 0
    assert members(r, "acme") == set()


def test_a_queue_or_model_the_tenant_may_not_use_is_forbidden(url: str, r: redis.Redis) -> None:
    limited = Tenant("acme", queues=("celery", "model.defects"), models=("defects",))
    with Client(url) as client:
        for call in (
            lambda: client.submit("a.jpg", tenant=limited, queue="bulk"),
            lambda: client.submit("a.jpg", tenant=limited),  # the default model
            lambda: client.submit("a.jpg", tenant=limited, model="other"),
            lambda: client.submit_many(["a.jpg"], tenant=Tenant("b", models=("x",)), model="y"),
        ):
            with pytest.raises(Forbidden) as refused:
                call()
            assert "nothing was sent" in str(refused.value)
            assert status_for(refused.value) == ExitStatus.USAGE
        # Allowed, it goes on to the usual checks: no worker serves it yet.
        from core.errors import UnknownModel

        with pytest.raises(UnknownModel):
            client.submit("a.jpg", tenant=limited, model="defects")
    assert not r.keys("*")  # no message, no reservation, nothing


# -- the worker's store releases an ended job ---------------------------------------------------


def test_a_final_state_carries_the_tenant_and_releases_the_job_and_its_upload(
    url: str, r: redis.Redis
) -> None:
    """worker/backend.py on a plain Celery app: the result and event carry the tenant, and the
    tenant's set and the upload lose the job, for a single job and a bulk message's images."""
    app = Celery("tenants-test", broker=url, backend=f"worker.backend:ResultBackend+{url}")
    backend: ResultBackend = app.backend
    acme = Tenant("acme")
    single, up, plain = acme.new_id(), acme.new_id(), "plain-1"
    images = [acme.new_id() for _ in range(3)]
    r.zadd(jobs_key(CONFIG, "acme"), dict.fromkeys([single, up, *images], time.time() + 60))
    for task_id in (up, images[1]):
        r.set(upload_key(task_id), b"bytes")
    r.set(upload_key(plain), b"bytes")

    def request(task_id: str, source: str, tenant: str | None = "acme") -> Context:
        fields: dict[str, Any] = {"id": task_id, "task": TASK_NAME, "args": [source]}
        fields["delivery_info"] = {"routing_key": "celery"}
        return Context({**fields, **({TENANT_HEADER: tenant} if tenant else {})})

    backend.store_result(single, {"p": 1}, states.SUCCESS, request=request(single, "a.jpg"))
    assert members(r, "acme") == {up, *images}
    backend.mark_as_failure(up, ValueError("x"), request=request(up, upload_source(up)))
    assert members(r, "acme") == set(images) and not r.exists(upload_key(up))
    # A job of no tenant keeps the others' keys; its own upload goes.
    backend.store_result(plain, {"p": 2}, states.SUCCESS, request=request(plain, "x", None))
    assert members(r, "acme") == set(images)
    bulk = Context(
        {
            "id": "bulk-1",
            "task": BULK_TASK_NAME,
            "delivery_info": {"routing_key": "celery"},
            TENANT_HEADER: "acme",
            "args": [
                [
                    {"id": images[0], "source": "a.jpg"},
                    {"id": images[1], "source": upload_source(images[1])},
                    {"id": images[2], "source": "c.jpg"},
                ]
            ],
        }
    )
    backend.store_many(
        [
            (images[0], {"p": 3}, states.SUCCESS),
            (images[1], KeyError("k"), states.FAILURE),
            (images[2], ValueError("cancelled"), states.REVOKED),
        ],
        request=bulk,
    )
    assert members(r, "acme") == set()
    assert not r.exists(upload_key(images[1]))
    stored = {i: json.loads(r.get(result_key(i)) or b"{}") for i in [single, up, *images]}
    assert {i: m.get("tenant") for i, m in stored.items()} == dict.fromkeys(stored, "acme")
    assert stored[single]["result"]["tenant"] == "acme"  # a SUCCESS's result too
    assert "tenant" not in json.loads(r.get(result_key(plain)) or b"{}")
    raw: Any = r.xrange(EVENTS_STREAM)
    tenants = {f[b"id"].decode(): f[b"tenant"].decode() for _, f in raw}
    assert tenants == {**dict.fromkeys([single, up, *images], "acme"), plain: ""}
    # A name that is no tenant's (a forged header) touches no key.
    odd = "odd-1"
    backend.store_result(odd, {"p": 4}, states.SUCCESS, request=request(odd, "x", "a b*"))
    assert "tenant" not in json.loads(r.get(result_key(odd)) or b"{}")
    app.close()


# -- the shipped gateway user --------------------------------------------------------------------


def test_the_shipped_gateway_user_submits_for_tenants_and_touches_no_workers_key(
    tmp_path: Path,
) -> None:
    """deploy/redis.conf's gateway user: reads keys and tenants, reserves and releases its
    tenants' jobs, stores uploads and idempotency keys, reads results; and cannot write a
    result, an API key, or anything of the workers'."""
    server = with_shipped_users(tmp_path)
    admin = redis.Redis(port=server.port, username="admin", password="imgqueue-admin-dev")
    worker = redis.Redis(port=server.port, username="worker", password="imgqueue-worker-dev")
    try:
        key, _ = create_key(admin, CONFIG, "acme", max_queued=2)
        url = f"redis://gateway:imgqueue-gateway-dev@127.0.0.1:{server.port}/0"
        with Client(url) as gateway:
            g = gateway.redis
            tenant = Keyring(g, CONFIG).authenticate(key)
            assert tenant is not None and tenant.name == "acme"
            ids = gateway.submit_many(["a.jpg", "b.jpg"], tenant=tenant, bulk_size=1)
            with pytest.raises(TenantQuotaExceeded):
                gateway.submit("c.jpg", tenant=tenant)
            assert queued(g, CONFIG, "acme") == 2
            group = gateway.submit_many(["d.jpg"], tenant=Tenant("other"), group=True)
            assert gateway.group(group.group_id).tenant == "other"
            release(g, CONFIG, "acme", ids[:1])
            assert queued(g, CONFIG, "acme") == 1
            # A worker stores the result; the gateway reads it.
            worker.set(result_key(ids[1]), json.dumps({"status": "SUCCESS", "result": {"p": 1}}))
            assert gateway.status(ids[1]).result == {"p": 1}
            g.set(upload_key("u-1"), b"bytes", ex=60)
            g.delete(upload_key("u-1"))
            g.set("imgqueue:idem:acme:k1", "job-id", ex=60)
            assert g.get("imgqueue:idem:acme:k1") == b"job-id"
            assert g.xrange(EVENTS_STREAM) == []
            forged = json.dumps({"status": "SUCCESS", "result": {"predictions": []}})
            for attempt in (
                lambda: g.set(result_key(ids[0]), forged),
                lambda: g.set("imgqueue:result-cache:" + "0" * 64, "{}"),
                lambda: g.hset("imgqueue:keys", "digest", "{}"),
                lambda: g.hset("imgqueue:tenants", "acme", "{}"),
                lambda: g.zadd("imgqueue:consumers", {"fake": 1.0}),
                lambda: g.zadd("imgqueue:other", {"fake": 1.0}),
                lambda: g.get(upload_key("u-2")),  # uploads are read by workers
                lambda: g.eval("return redis.call('SET', KEYS[1], 'x')", 1, "celery-task-meta-x"),
                lambda: g.delete("celery"),
                lambda: g.publish(result_key("x"), forged),
                lambda: g.flushdb(),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()
            # Its scripts run only the reserve's commands, even on its tenants' keys.
            with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
                g.eval("return redis.call('DEL', KEYS[1])", 1, jobs_key(CONFIG, "acme"))
            assert queued(g, CONFIG, "acme") == 1
    finally:
        admin.close()
        worker.close()
        server.stop()
