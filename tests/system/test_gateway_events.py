"""GET /v1/events on a real gateway process, with a real worker (stand-in model) and Redis:
each tenant's stream carries its own completion events only, resumes exactly after
Last-Event-ID, keeps idle connections alive, and many open streams hold no thread nor Redis
connection of their own (one reader per gateway, services/gateway/event_hub.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import requests

from tests.support.gateway import Gateway, bearer, make_key
from tests.support.sse import SseStream
from tests.support.waiting import wait_for
from tests.support.workers import WorkerFactory

KEEPALIVE_S = 0.5


@dataclass
class Setup:
    gateway: Gateway
    acme: str  # API keys
    bravo: str
    images: str  # http://127.0.0.1:N, serving the sample photos

    def stream(self, key: str, since: str | None = None, **headers: str) -> SseStream:
        query = "" if since is None else f"?since={since}"
        return SseStream(f"{self.gateway.url}/v1/events{query}", {**bearer(key), **headers})

    def submit(self, key: str, count: int, **options: object) -> dict[str, object]:
        sources = [f"{self.images}/{name}" for name in ("cat.jpg", "coffee.jpg")] * count
        body = {"sources": sources[:count], "top_k": 2, **options}
        answer = requests.post(
            f"{self.gateway.url}/v1/jobs", json=body, headers=bearer(key), timeout=10
        )
        assert answer.status_code == 202, answer.text
        submitted: dict[str, object] = answer.json()
        return submitted


@pytest.fixture(scope="module")
def setup(
    workers: WorkerFactory, redis_url: str, http_base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    workers.start(MODEL="sleep:5ms")
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gateway = Gateway(redis_url, log, SSE_KEEPALIVE_S=str(KEEPALIVE_S)).wait_ready()
    try:
        yield Setup(gateway, make_key(redis_url, "acme"), make_key(redis_url, "bravo"), http_base)
    finally:
        gateway.stop()
    log_text = log.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-4000:]


def ids_of(submitted: dict[str, object]) -> list[str]:
    ids = submitted["ids"]
    assert isinstance(ids, list)
    return [str(i) for i in ids]


def test_a_tenant_streams_its_own_job_and_group_events_only(setup: Setup) -> None:
    with setup.stream(setup.acme) as acme, setup.stream(setup.bravo) as bravo:
        assert (acme.status, bravo.status) == (200, 200)
        assert acme.response.headers["content-type"].startswith("text/event-stream")
        grouped = setup.submit(setup.acme, 2, group=True, webhook="http://127.0.0.1:9/hook")
        theirs = ids_of(setup.submit(setup.bravo, 2))
        ours = ids_of(grouped)
        group = str(grouped["group"])
        mine = acme.wait_ids({*ours, group})
        bravo.wait_ids(set(theirs))
        # The group's event follows its last job's (docs/lifecycle.md).
        wait_for(lambda: len(acme.messages) >= 3, 10, "acme's three events")
    assert [m.event for m in acme.messages] == ["job", "job", "group"]
    for message in mine.values():
        data = message.json
        assert data["tenant"] == "acme" and data["entry_id"] == message.id
        assert data["kind"] == message.event
        assert "webhook" not in data  # the receiver's URL is never streamed
    assert [mine[i].json["state"] for i in ours] == ["SUCCESS", "SUCCESS"]
    assert mine[group].json["total"] == 2 and mine[group].json["succeeded"] == 2
    assert {m.json["id"] for m in bravo.messages} == set(theirs)
    assert {m.json["tenant"] for m in bravo.messages} == {"bravo"}


def test_last_event_id_resumes_exactly_after_it(setup: Setup) -> None:
    with setup.stream(setup.acme) as first:
        before = ids_of(setup.submit(setup.acme, 3))
        got = first.wait_ids(set(before))
    order = sorted(got.values(), key=lambda m: tuple(int(p) for p in m.id.split("-")))
    # One more job ends while no stream is open.
    later = ids_of(setup.submit(setup.acme, 1))
    answer = requests.get(
        f"{setup.gateway.url}/v1/jobs/{later[0]}?wait=30", headers=bearer(setup.acme), timeout=40
    )
    assert answer.json()["state"] == "SUCCESS"
    expected = [m.json["id"] for m in order[1:]] + later

    # Last-Event-ID (as EventSource sends it) wins over ?since=; ?since= alone does the same.
    for since, headers in ((None, {"Last-Event-ID": order[0].id}), (order[0].id, {})):
        stream = setup.stream(setup.acme, since="0" if since is None else since, **headers)
        with stream:
            resumed = stream.wait_messages(len(expected))
            stream.wait_comment_after(len(expected))
            assert [m.json["id"] for m in resumed] == expected
            assert len(stream.messages) == len(expected)  # nothing before, nothing twice
            # And it goes on live after the catch-up.
            live = ids_of(setup.submit(setup.acme, 1))
            stream.wait_ids(set(live))
            assert [m.json["id"] for m in stream.messages] == expected + live
        expected += live  # the next round resumes from the same id: it has this one too


def test_an_idle_stream_gets_keep_alives(setup: Setup) -> None:
    with setup.stream(setup.acme) as stream:
        wait_for(lambda: len(stream.comments) >= 2, 10, "two keep-alive comments")
        assert stream.messages == []


def test_refusals_are_problems(setup: Setup) -> None:
    url = f"{setup.gateway.url}/v1/events"
    none = requests.get(url, timeout=10)
    assert none.status_code == 401 and none.json()["type"] == "Unauthorized"
    assert none.headers["content-type"] == "application/problem+json"
    assert "Bearer" in none.headers["www-authenticate"]
    wrong = requests.get(url, headers=bearer("iq_" + "x" * 43), timeout=10)
    assert wrong.status_code == 401
    bad = requests.get(url + "?since=yesterday", headers=bearer(setup.acme), timeout=10)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "since"
    header = requests.get(url, headers={**bearer(setup.acme), "Last-Event-ID": "x"}, timeout=10)
    assert header.status_code == 422 and header.json()["errors"][0]["field"] == "Last-Event-ID"


def blocked_readers(r: redis.Redis) -> int:
    """Redis connections blocked in XREAD now (the gateway's reader, between entries)."""
    clients = r.client_list()
    return sum(1 for c in clients if "b" in c["flags"] and c["cmd"] == "xread")


def test_many_streams_share_one_reader_and_end_when_their_clients_go(
    setup: Setup, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    count = 60  # more than the gateway's thread pool (40): a thread each would starve it
    connected_before = len(r.client_list())
    streams = [setup.stream(setup.acme) for _ in range(count)]
    try:
        assert {s.status for s in streams} == {200}
        # Endpoints that run in the thread pool still answer at once.
        began = time.monotonic()
        ready = requests.get(f"{setup.gateway.url}/readyz", timeout=10)
        assert ready.status_code == 200 and time.monotonic() - began < 2
        # No Redis connection per stream: a handful at most for the reader.
        assert len(r.client_list()) - connected_before < 5
        wait_for(lambda: blocked_readers(r) == 1, 10, "one blocked XREAD: the shared reader")
        ids = set(ids_of(setup.submit(setup.acme, 1)))
        for stream in streams:
            stream.wait_ids(ids)
    finally:
        for stream in streams:
            stream.close()
    # Every subscription ended with its client: the reader stops once none is left.
    wait_for(lambda: blocked_readers(r) == 0, 10, "the shared reader to stop")
    r.close()


def test_the_openapi_document_has_them(setup: Setup) -> None:
    spec = requests.get(f"{setup.gateway.url}/openapi.json", timeout=10).json()
    events = spec["paths"]["/v1/events"]["get"]
    assert set(events["responses"]["200"]["content"]) == {"text/event-stream"}
    assert set(events["responses"]["401"]["content"]) == {"application/problem+json"}
    assert "ProblemDetails" in spec["components"]["schemas"]
    assert {p["name"] for p in events["parameters"]} == {"since", "Last-Event-ID"}
    assert "depth" in spec["components"]["schemas"]["Queue"]["properties"]
    assert "/" not in spec["paths"]  # the page is not part of the API


def test_the_page_is_served_with_its_policy(setup: Setup) -> None:
    page = requests.get(setup.gateway.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="page/app.js"' in page.text
    assert requests.head(setup.gateway.url + "/", timeout=10).status_code == 200
    script = requests.get(setup.gateway.url + "/page/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert requests.get(setup.gateway.url + "/page/app.py", timeout=10).status_code == 404
    assert requests.get(setup.gateway.url + "/page/..%2Fapp.py", timeout=10).status_code == 404


def test_a_queues_depth_for_its_tenant(setup: Setup, redis_url: str) -> None:
    url = f"{setup.gateway.url}/v1/queues"
    answer = requests.get(f"{url}/celery", headers=bearer(setup.acme), timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"name": "celery", "depth": 0, "limit": None}
    assert requests.get(f"{url}/celery", timeout=10).status_code == 401
    bulk_only = make_key(redis_url, "bulky", queues=("bulk",))
    refused = requests.get(f"{url}/celery", headers=bearer(bulk_only), timeout=10)
    assert refused.status_code == 403 and refused.json()["type"] == "Forbidden"
    # No worker consumes `bulk`: what is sent there waits, and the depth counts its messages.
    for _ in range(2):
        sent = requests.post(
            f"{setup.gateway.url}/v1/jobs",
            json={"source": f"{setup.images}/cat.jpg", "queue": "bulk"},
            headers=bearer(bulk_only),
            timeout=10,
        )
        assert sent.status_code == 202, sent.text
    waiting = requests.get(f"{url}/bulk", headers=bearer(bulk_only), timeout=10)
    assert waiting.status_code == 200 and waiting.json()["depth"] == 2
