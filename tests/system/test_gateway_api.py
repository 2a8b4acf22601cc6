"""The HTTP gateway's API without a worker: a real `imgqueue serve` process, the test Redis,
`requests` as the client. Jobs submitted here stay queued (no worker runs them), which is what
these tests need: ids, tenants, idempotency, refusals and their problem details.

One gateway for the module, under its own REDIS_KEY_PREFIX (deleted at the end).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from core import tenants
from core.connections import RedisConfig
from core.keys import priority_lists
from tests.support.gateway import Gateway, bearer, create_key, make_key, prefixed_gateway
from tests.support.waiting import wait_for

PREFIX = f"gwapi{os.getpid()}:"


PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with prefixed_gateway(redis_url, tmp_path_factory.mktemp("gw") / "gw.log", PREFIX) as gw:
        yield gw


@pytest.fixture(scope="module")
def acme(redis_url: str, gateway: Gateway) -> str:
    """A key made as an operator makes one: `imgqueue keys create`."""
    return create_key(redis_url, "acme", prefix=PREFIX)


@pytest.fixture(scope="module")
def globex(redis_url: str, gateway: Gateway) -> str:
    return make_key(redis_url, "globex", PREFIX)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def post(gw: Gateway, key: str, body: Any, **headers: str) -> requests.Response:
    return requests.post(
        f"{gw.url}/v1/jobs", json=body, headers={**bearer(key), **headers}, timeout=10
    )


def get(gw: Gateway, key: str, path: str) -> requests.Response:
    return requests.get(gw.url + path, headers=bearer(key), timeout=15)


def problem(response: requests.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == type_ and body["status"] == status and body["detail"], body
    return body


def queued(raw: redis.Redis, queue: str = "celery") -> int:
    """Messages waiting in a queue, its ten priority lists together."""
    return sum(int(raw.llen(name)) for name in priority_lists(queue, PREFIX))


def test_submit_answers_ids_and_where_to_look(gateway: Gateway, acme: str) -> None:
    one = post(gateway, acme, {"source": "cat.jpg", "top_k": 3, "priority": 2})
    assert one.status_code == 202, one.text
    job = one.json()["id"]
    assert one.headers["location"] == f"/v1/jobs/{job}"
    many = post(gateway, acme, {"sources": ["a.jpg", "b.jpg"], "deadline": 600})
    assert many.status_code == 202 and len(many.json()["ids"]) == 2
    for deadline in ("600", "2100-01-02T03:04:05Z"):  # seconds as text; an ISO 8601 time
        assert post(gateway, acme, {"source": "a.jpg", "deadline": deadline}).status_code == 202
    assert "location" not in many.headers  # no one resource to point at
    grouped = post(gateway, acme, {"sources": ["a.jpg", "b.jpg", "c.jpg"], "group": True})
    group = grouped.json()["group"]
    assert grouped.headers["location"] == f"/v1/groups/{group}"

    state = get(gateway, acme, f"/v1/jobs/{job}").json()
    assert state["id"] == job and state["state"] == "PENDING" and state["tenant"] == "acme"
    assert abs(state["created"] - time.time()) < 60
    counts = get(gateway, acme, f"/v1/groups/{group}").json()
    assert (counts["total"], counts["queued"], counts["tenant"]) == (3, 3, "acme")
    lines = get(gateway, acme, f"/v1/groups/{group}/results")
    assert lines.headers["content-type"] == "application/x-ndjson"
    jobs = [json.loads(line) for line in lines.text.splitlines()]
    assert [j["id"] for j in jobs] == grouped.json()["ids"]
    assert {j["state"] for j in jobs} == {"PENDING"}


def test_a_wait_on_a_queued_job_answers_when_its_time_is_up(gateway: Gateway, acme: str) -> None:
    job = post(gateway, acme, {"source": "cat.jpg"}).json()["id"]
    answer = get(gateway, acme, f"/v1/jobs/{job}?wait=0.5")
    assert answer.json()["state"] == "PENDING"
    assert 0.5 <= answer.elapsed.total_seconds() < 3
    body = problem(get(gateway, acme, f"/v1/jobs/{job}?wait=61"), 422, "ValidationError")
    assert body["errors"][0]["field"] == "wait"


def test_cancel_a_queued_job(gateway: Gateway, acme: str) -> None:
    job = post(gateway, acme, {"source": "cat.jpg"}).json()["id"]
    done = requests.post(f"{gateway.url}/v1/jobs/{job}/cancel", headers=bearer(acme), timeout=10)
    assert done.json() == {"id": job, "outcome": "cancelled", "state": "PENDING"}


def test_another_tenants_jobs_and_groups_are_not_found(
    gateway: Gateway, acme: str, globex: str
) -> None:
    theirs = post(gateway, globex, {"sources": ["a.jpg"], "group": True}).json()
    job, group = theirs["ids"][0], theirs["group"]
    assert get(gateway, globex, f"/v1/jobs/{job}").status_code == 200
    unknown = job[:-4] + "0000"  # globex's tag: acme cannot tell it from `job`
    for path, missing in (
        (f"/v1/jobs/{job}", f"/v1/jobs/{unknown}"),
        (f"/v1/groups/{group}", "/v1/groups/0c0ffee0-0000-4000-8000-000000000000"),
        (f"/v1/groups/{group}/results", "/v1/groups/0c0ffee0-0000-4000-8000-000000000000/results"),
    ):
        other, none = get(gateway, acme, path), get(gateway, acme, missing)
        problem(other, 404, "NotFound")
        body, nobody = other.json(), none.json()
        # The same answer but for the id it names: nothing tells "someone else's" from "none".
        assert body["detail"].replace(path.split("/")[3], "X") == nobody["detail"].replace(
            missing.split("/")[3], "X"
        )
        assert {**body, "detail": ""} == {**nobody, "detail": ""}
    cancel = requests.post(f"{gateway.url}/v1/jobs/{job}/cancel", headers=bearer(acme), timeout=10)
    problem(cancel, 404, "NotFound")
    assert get(gateway, globex, f"/v1/jobs/{job}").json()["state"] == "PENDING"  # untouched


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": 5}, "source"),
        ({"sources": ["a.jpg", 7]}, "sources.1"),
        ({"source": "a.jpg", "top_k": "5"}, "top_k"),
        ({"source": "a.jpg", "top_k": 0}, "top_k"),
        ({"source": "a.jpg", "priority": True}, "priority"),
        ({"source": "a.jpg", "group": "yes"}, "group"),
        ({"source": "a.jpg", "deadline": -3}, "deadline"),
        ({"source": "a.jpg", "deadline": "2001-01-01T00:00:00Z"}, "deadline"),
        ({"source": "a.jpg", "deadline": "soon"}, "deadline"),
        ({"source": "a.jpg", "deadline": True}, "deadline"),
        ({"source": "a.jpg", "webhook": "ftp://example.com/x"}, "webhook"),
        ({"source": "a.jpg", "model": "Not A Name"}, "model"),
        ({"source": "a.jpg", "topk": 3}, "topk"),
        ({"source": "a.jpg", "sources": ["b.jpg"]}, "body"),
        ({}, "body"),
        ([], "body"),
    ],
)
def test_wrong_types_and_values_are_422_naming_the_field(
    gateway: Gateway, acme: str, raw: redis.Redis, body: Any, field: str
) -> None:
    before = queued(raw)
    refused = problem(post(gateway, acme, body), 422, "ValidationError")
    assert field in [e["field"] for e in refused["errors"]], refused
    assert queued(raw) == before


def test_malformed_json_and_bad_sources_are_422(gateway: Gateway, acme: str) -> None:
    headers = {**bearer(acme), "Content-Type": "application/json"}
    for text in ('{"source": "a.jpg"', "", "nul", '{"source": "a.jpg"} x'):
        answer = requests.post(f"{gateway.url}/v1/jobs", data=text, headers=headers, timeout=10)
        assert problem(answer, 422, "ValidationError")["errors"][0]["field"] == "body"
    bad = problem(post(gateway, acme, {"sources": ["a.jpg", "b\nc.jpg"]}), 422, "InvalidSource")
    assert bad["errors"] == [{"field": "sources.1", "message": bad["errors"][0]["message"]}]
    assert "control character" in bad["detail"]
    blank = problem(post(gateway, acme, {"source": " "}), 422, "InvalidSource")
    assert blank["errors"][0]["field"] == "source"
    form = requests.post(f"{gateway.url}/v1/jobs", data={"source": "a"}, headers=bearer(acme))
    problem(form, 415, "UnsupportedMediaType")


def test_an_idempotency_key_submits_once(gateway: Gateway, acme: str, raw: redis.Redis) -> None:
    body = {"sources": ["a.jpg", "b.jpg"], "top_k": 2}
    first = post(gateway, acme, body, **{"Idempotency-Key": "order-17"})
    before = queued(raw)
    again = post(
        gateway,
        acme,
        {"top_k": 2, "sources": ["a.jpg", "b.jpg"]},
        **{"Idempotency-Key": "order-17"},
    )
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert queued(raw) == before  # nothing sent again
    other = post(gateway, acme, {"sources": ["c.jpg"]}, **{"Idempotency-Key": "order-17"})
    problem(other, 422, "IdempotencyKeyReused")
    fresh = post(gateway, acme, body, **{"Idempotency-Key": "order-18"})
    assert fresh.status_code == 202 and fresh.json()["ids"] != first.json()["ids"]
    stored = list(raw.scan_iter(match=f"{PREFIX}imgqueue:idem:acme:*"))
    assert len(stored) == 2 and 0 < raw.ttl(stored[0]) <= 24 * 3600
    assert b"order-17" not in b"".join(stored)  # the client's key is hashed


def test_an_idempotency_key_is_per_tenant(gateway: Gateway, acme: str, globex: str) -> None:
    body = {"source": "a.jpg"}
    ours = post(gateway, acme, body, **{"Idempotency-Key": "shared"}).json()["id"]
    theirs = post(gateway, globex, body, **{"Idempotency-Key": "shared"}).json()["id"]
    assert ours != theirs


def test_quota_and_queue_limits_are_429_with_retry_after(
    gateway: Gateway, redis_url: str, raw: redis.Redis
) -> None:
    small = make_key(redis_url, "small", PREFIX, max_queued=1)
    assert post(gateway, small, {"source": "a.jpg"}).status_code == 202
    over = post(gateway, small, {"source": "b.jpg"})
    problem(over, 429, "TenantQuotaExceeded")
    assert int(over.headers["retry-after"]) > 0
    raw.hset(f"{PREFIX}imgqueue:limits", "tight", 0)
    full = make_key(redis_url, "tight", PREFIX)
    answer = post(gateway, full, {"source": "a.jpg", "queue": "tight"})
    problem(answer, 429, "QueueFull")
    assert int(answer.headers["retry-after"]) > 0


def test_a_queue_or_model_the_tenant_may_not_use_is_403(gateway: Gateway, redis_url: str) -> None:
    narrow = make_key(redis_url, "narrow", PREFIX, queues=("bulk",))
    problem(post(gateway, narrow, {"source": "a.jpg"}), 403, "Forbidden")
    assert post(gateway, narrow, {"source": "a.jpg", "queue": "bulk"}).status_code == 202
    picky = make_key(redis_url, "picky", PREFIX, models=("defects",))
    problem(post(gateway, picky, {"source": "a.jpg", "model": "other"}), 403, "Forbidden")


def test_a_full_redis_is_503_with_retry_after(
    gateway: Gateway, acme: str, raw: redis.Redis
) -> None:
    before = raw.config_get("maxmemory")["maxmemory"]
    raw.config_set("maxmemory", 1)
    try:
        answer = post(gateway, acme, {"source": "a.jpg"})
    finally:
        raw.config_set("maxmemory", before)
    problem(answer, 503, "RedisFull")
    assert int(answer.headers["retry-after"]) > 0


def test_keys_none_wrong_or_revoked_are_401_and_never_logged(
    gateway: Gateway, redis_url: str, acme: str, raw: redis.Redis
) -> None:
    path = f"{gateway.url}/v1/jobs/x"
    problem(requests.get(path, timeout=10), 401, "Unauthorized")
    wrong = "iq_" + "x" * 43
    problem(requests.get(path, headers=bearer(wrong), timeout=10), 401, "Unauthorized")
    problem(requests.get(path, headers={"Authorization": f"Basic {acme}"}), 401, "Unauthorized")
    revoked = make_key(redis_url, "gone", PREFIX)
    assert get(gateway, revoked, "/v1/jobs/x").status_code == 404  # known: the job is not
    assert tenants.revoke(raw, RedisConfig(redis_url, "", PREFIX), revoked)
    wait_for(
        lambda: get(gateway, revoked, "/v1/jobs/x").status_code == 401,
        tenants.KEY_TTL_S + 5,
        "the revoked key to be refused",
    )
    log = gateway.log()
    assert "GET /v1/jobs/x" in log  # the access log is on
    for key in (acme, wrong, revoked):
        assert key not in log and key[3:15] not in log


def test_openapi_docs_health_and_metrics(gateway: Gateway, acme: str) -> None:
    spec = requests.get(f"{gateway.url}/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(spec["paths"])
    assert {"/v1/groups/{group_id}", "/v1/groups/{group_id}/results"} <= set(spec["paths"])
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(body)
    assert "top_k" in body["application/json"]["schema"]["properties"]
    assert "Job" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    docs = requests.get(f"{gateway.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert requests.get(f"{gateway.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{gateway.url}/readyz", timeout=10).json() == {"status": "ready"}

    job = post(gateway, acme, {"source": "a.jpg"}).json()["id"]
    get(gateway, acme, f"/v1/jobs/{job}")
    requests.get(f"{gateway.url}/no/such/path", timeout=10)
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'route="/v1/jobs/{job_id}",status="200"' in text
    assert 'imgqueue_gateway_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "imgqueue_gateway_request_duration_seconds_bucket" in text
    assert job not in text  # labels are route templates, never ids


def test_cors_is_off_unless_configured(gateway: Gateway) -> None:
    origin = {"Origin": "https://app.example.com"}
    preflight = requests.options(
        f"{gateway.url}/v1/jobs",
        headers={**origin, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    simple = requests.get(f"{gateway.url}/healthz", headers=origin, timeout=10)
    for answer in (preflight, simple):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


def test_concurrent_requests_with_one_idempotency_key_submit_once(
    gateway: Gateway, acme: str, raw: redis.Redis
) -> None:
    before = queued(raw)
    body = {"sources": ["a.jpg", "b.jpg", "c.jpg"], "group": True}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: post(gateway, acme, body, **{"Idempotency-Key": "race"}), range(8))
        )
    assert {a.status_code for a in answers} == {202}
    assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1
    assert queued(raw) == before + 1  # one bulk message: the first writer's


def test_a_wait_wakes_when_the_result_is_published(
    gateway: Gateway, acme: str, raw: redis.Redis
) -> None:
    """No worker here: the two commands a worker's result script runs (worker/backend.py) are
    run by hand, after the waiter's re-reads have spread to about a second apart."""
    job = post(gateway, acme, {"source": "cat.jpg"}).json()["id"]
    answered: list[tuple[float, dict[str, Any]]] = []

    def wait() -> None:
        answer = get(gateway, acme, f"/v1/jobs/{job}?wait=20")
        answered.append((time.monotonic(), answer.json()))

    waiter = threading.Thread(target=wait)
    waiter.start()
    key = f"{PREFIX}celery-task-meta-{job}"
    wait_for(lambda: raw.pubsub_numsub(key)[0][1] == 1, 10, "the gateway to subscribe")
    time.sleep(1.6)  # the point: a time the waiter's re-reads are far apart
    meta = json.dumps({"status": "SUCCESS", "result": {"predictions": []}, "task_id": job})
    raw.set(key, meta)
    raw.publish(key, meta)
    stored = time.monotonic()
    waiter.join(20)
    at, body = answered[0]
    assert body["state"] == "SUCCESS" and body["result"] == {"predictions": []}
    assert at - stored < 0.3  # woken, not found by the next re-read (~1 s later)
