"""Webhooks: the dispatcher (`python -m services.webhooks`, a real process) POSTing to a loopback
receiver. Signatures are checked with an HMAC computed independently (tests/support/webhooks.py,
with the receiver and the dispatcher process); retries, the SSRF refusal, a hanging receiver
and dead letters are observed from outside, on deadlines.

Each test has its own REDIS_KEY_PREFIX, so its stream, retry set and dead letters are its own.
Events are XADDed here in core.lifecycle' documented shape. The CLI, as a process, takes a
webhook too (tests/unit/test_webhooks.py: the parts in this process)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from core import tenants
from core.connections import RedisConfig
from core.lifecycle import (
    EVENTS_STREAM,
    WEBHOOK_CONSUMER_GROUP,
    WEBHOOK_HEADER,
    WEBHOOK_RETRIES,
)
from producer import status
from services.webhooks.deliveries import Delivery
from tests.support.cli import imgqueue
from tests.support.messages import headers_of, queued_messages
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_for
from tests.support.webhooks import (
    SECRET,
    Received,
    Receiver,
    Setup,
    receiver_fixture,  # noqa: F401  (the fixture `receiver`)
    setup_fixture,  # noqa: F401  (the fixture `setup`)
    verify,
)


def documented(lang: str) -> str:
    """A code block of docs/lifecycle.md's "Verifying a delivery", as written there."""
    text = (ROOT / "docs" / "lifecycle.md").read_text()
    found = re.search(rf"```{lang}\n(.*?)```", text[text.index("### Verifying a delivery") :], re.S)
    assert found is not None, lang
    return found.group(1)


_NODE_DRIVER = """
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const body = Buffer.from(input.body, "base64");
const out = {id: verify(input.secret, input.headers, body).id};
try { verify(input.secret, input.headers, Buffer.concat([body, Buffer.from(" ")])); }
catch (e) { out.tampered = e.message; }
console.log(JSON.stringify(out));
"""


def check_documented_receivers(request: Received) -> None:
    """The Python and Node.js receivers of docs/lifecycle.md accept a real delivery and refuse
    it with one byte added."""
    namespace: dict[str, Any] = {}
    exec(documented("python"), namespace)
    python_verify = namespace["verify"]
    assert python_verify(SECRET, request.headers, request.body)["id"] == verify(request)["id"]
    with pytest.raises(ValueError, match="no valid webhook-signature"):
        python_verify(SECRET, request.headers, request.body + b" ")
    node = shutil.which("node")
    if node is None:
        return
    data = {
        "secret": SECRET,
        "headers": request.headers,
        "body": base64.b64encode(request.body).decode(),
    }
    out = subprocess.run(
        [node, "-e", documented("js") + _NODE_DRIVER],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer == {"id": verify(request)["id"], "tampered": "no valid webhook-signature"}


# -- the dispatcher process alone --------------------------------------------------------------


def test_the_dispatcher_imports_neither_celery_nor_torch() -> None:
    code = (
        "import sys, services.webhooks.main; print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert not {"celery", "kombu", "torch", "PIL"} & set(json.loads(out.stdout.replace("'", '"')))


def test_the_dispatcher_needs_a_secret(setup: Setup) -> None:
    d = setup.start(WEBHOOK_SECRET="")
    assert d.proc.wait(30) == 2
    assert "WEBHOOK_SECRET is unset" in d.log()


# -- the dispatcher, end to end on XADDed events ---------------------------------------------


def test_a_signed_delivery_of_each_outcome(setup: Setup, receiver: Receiver) -> None:
    ok = "ok-" + os.urandom(4).hex()
    setup.result(ok, {"status": "SUCCESS", "result": {"predictions": [{"label": "tabby"}]}})
    bad = "bad-" + os.urandom(4).hex()
    setup.result(
        bad,
        {"status": "FAILURE", "result": {"exc_type": "SourceNotFound", "exc_message": ["404"]}},
    )
    setup.event("no-webhook", "")  # acknowledged, never delivered
    setup.event(ok, receiver.base + "/ok")
    setup.event(bad, receiver.base + "/ok", state="FAILURE", error="SourceNotFound")
    setup.start()
    wait_for(lambda: len(receiver.to("/ok")) == 2, 20, "two deliveries")
    bodies = {verify(r)["id"]: (r, verify(r)) for r in receiver.to("/ok")}
    request, body = bodies[ok]
    assert request.headers["webhook-id"] == f"job_{ok}"
    assert request.headers["user-agent"].startswith("imgqueue-webhooks/")
    assert body["type"] == "job" and body["state"] == "SUCCESS" and body["queue"] == "celery"
    assert body["result"] == {"predictions": [{"label": "tabby"}]} and "error" not in body
    check_documented_receivers(request)
    _, body = bodies[bad]
    assert body["state"] == "FAILURE" and body["error"] == {
        "type": "SourceNotFound",
        "message": "404",
    }
    # Everything acknowledged, nothing left to retry, nothing dead.
    stream = setup.prefix + EVENTS_STREAM
    wait_for(lambda: setup.r.xpending(stream, WEBHOOK_CONSUMER_GROUP)["pending"] == 0, 10, "acks")
    wait_for(lambda: setup.retrying() == 0, 10, "an empty retry set")
    assert setup.dead() == []


def test_500s_then_200_is_delivered_on_the_third_attempt(setup: Setup, receiver: Receiver) -> None:
    setup.result("t-flaky", {"status": "SUCCESS", "result": {"n": 1}})
    setup.event("t-flaky", receiver.base + "/flaky/2/a")
    setup.start()
    wait_for(lambda: len(receiver.to("/flaky/2/a")) == 3, 20, "three attempts")
    wait_for(lambda: setup.retrying() == 0, 10, "the delivery to leave the retry set")
    attempts = receiver.to("/flaky/2/a")
    assert {r.headers["webhook-id"] for r in attempts} == {"job_t-flaky"}
    assert len({r.body for r in attempts}) == 1  # the same bytes every time
    for r in attempts:
        verify(r)
    # Backoff: 0.05 s, then 0.1 s (each up to 10% more).
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps
    assert setup.dead() == []


def test_refused_addresses_are_dead_lettered_without_connecting(
    setup: Setup, receiver: Receiver
) -> None:
    """FETCH_ALLOW_NETWORKS opens loopback only: a private address and the cloud metadata
    address are refused before any connection (the reason says which policy refused them)."""
    setup.event("t-private", "http://10.0.0.1/hook?token=SECRET-TOKEN")
    setup.event("t-metadata", "http://169.254.169.254/latest/meta-data/")
    setup.event("t-creds", "https://user:pw@example.com/hook")
    setup.event("t-fine", receiver.base + "/ok")
    d = setup.start()
    wait_for(lambda: len(setup.dead()) == 3, 20, "three dead letters")
    dead = {e["id"]: e for e in setup.dead()}
    assert dead["t-private"]["reason"] == "refused" and dead["t-private"]["attempts"] == 1
    assert "10.0.0.1, a non-public address: private" in dead["t-private"]["error"]
    assert dead["t-private"]["url"] == "http://10.0.0.1/hook?REDACTED"
    assert "link-local (cloud metadata)" in dead["t-metadata"]["error"]
    assert "user or password" in dead["t-creds"]["error"]
    assert all(e["status"] is None for e in dead.values())
    wait_for(lambda: receiver.to("/ok"), 10, "the allowed delivery")
    assert "SECRET-TOKEN" not in d.log() and "pw@" not in d.log()
    assert d.log().count("webhook given up") == 3


def test_a_failing_receiver_is_dead_lettered_after_the_last_attempt(
    setup: Setup, receiver: Receiver
) -> None:
    setup.event("t-down", receiver.base + "/status/503")
    d = setup.start(WEBHOOK_MAX_ATTEMPTS="3")
    wait_for(setup.dead, 20, "a dead letter")
    (entry,) = setup.dead()
    assert entry["reason"] == "attempts" and entry["attempts"] == 3
    assert entry["status"] == 503 and entry["error"] == "HTTP 503"
    assert entry["webhook_id"] == "job_t-down" and entry["kind"] == "job"
    assert len(receiver.to("/status/503")) == 3 and setup.retrying() == 0
    assert "webhook given up" in d.log()
    # The expired result left the event's state; the body said so.
    assert verify(receiver.to("/status/503")[0])["state"] == "SUCCESS"
    # `imgqueue status` shows it.
    out = imgqueue(
        setup.env["REDIS_URL"], "--key-prefix", setup.prefix, "status", "--json", "--timeout", "0.2"
    )
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    hooks = state["webhooks"]
    assert hooks["dead_letters"] == 1 and hooks["retrying"] == 0 and hooks["lag"] == 0
    assert hooks["recent"][0]["id"] == "t-down"
    text = status.render(state)  # what `imgqueue status` prints of the same
    assert "webhooks: 0 retrying, 1 dead-lettered, 0 event(s) not yet read" in text
    assert f"job t-down  {receiver.base}/status/503  HTTP 503 (attempts, 3 attempt(s))" in text


def test_a_hanging_receiver_costs_one_timeout_and_blocks_nothing(
    setup: Setup, receiver: Receiver
) -> None:
    setup.event("t-hang", receiver.base + "/hang")
    # The timeout leaves a loaded machine time to deliver the other one while this one hangs.
    setup.start(WEBHOOK_TIMEOUT="4", WEBHOOK_MAX_ATTEMPTS="1")
    wait_for(lambda: receiver.to("/hang"), 20, "the hanging request")
    setup.event("t-other", receiver.base + "/ok")
    wait_for(lambda: receiver.to("/ok"), 20, "the other delivery")
    (hang,), (other,) = receiver.to("/hang"), receiver.to("/ok")
    assert other.at - hang.at < 4  # delivered while the first one still hung
    wait_for(setup.dead, 20, "the hanging delivery's dead letter")
    (entry,) = setup.dead()
    assert entry["id"] == "t-hang" and "no answer within WEBHOOK_TIMEOUT (4 s)" in entry["error"]
    assert 3.9 <= entry["at"] - entry["first_at"] < 10  # one timeout, not more


def test_what_a_stopped_dispatcher_held_is_delivered(setup: Setup, receiver: Receiver) -> None:
    stream = setup.prefix + EVENTS_STREAM
    setup.r.xgroup_create(stream, WEBHOOK_CONSUMER_GROUP, id="0", mkstream=True)
    setup.event("t-orphan", receiver.base + "/ok")
    ((_, entries),) = setup.r.xreadgroup(WEBHOOK_CONSUMER_GROUP, "gone:1", {stream: ">"})
    # As if read a minute ago by a dispatcher that died before moving it.
    setup.r.xclaim(stream, WEBHOOK_CONSUMER_GROUP, "gone:1", 0, [entries[0][0]], idle=60_000)
    # A delivery whose lease ran out (its dispatcher died mid-attempt), and junk.
    leased = Delivery("job", "t-leased", receiver.base + "/leased", attempts=1, body='{"kept":1}')
    setup.r.zadd(setup.prefix + WEBHOOK_RETRIES, {leased.member(): time.time() - 1, "junk": 0})
    d = setup.start()
    request = wait_for(lambda: receiver.to("/ok"), 20, "the orphaned event's delivery")[0]
    assert verify(request)["id"] == "t-orphan"
    wait_for(lambda: setup.r.xpending(stream, WEBHOOK_CONSUMER_GROUP)["pending"] == 0, 10, "ack")
    (again,) = wait_for(lambda: receiver.to("/leased"), 10, "the leased delivery, made again")
    assert verify(again) == {"kept": 1} and again.headers["webhook-id"] == "job_t-leased"
    wait_for(lambda: setup.retrying() == 0, 10, "an empty retry set")
    assert "dropped a retry set member that is not a delivery: b'junk'" in d.log()


# -- the CLI takes a webhook; the dispatcher's connections and metrics -------------------------


def test_the_cli_takes_a_webhook(redis_url: str, redis_client: redis.Redis) -> None:
    queue = f"wh-cli-{os.getpid()}"
    bad = imgqueue(redis_url, "submit", "--queue", queue, "--webhook", "https://u:pw@h/x", "x.jpg")
    assert bad.returncode == 2 and "user or password" in bad.stderr and "pw" not in bad.stderr
    good = imgqueue(redis_url, "submit", "--queue", queue, "--webhook", "http://h/in", "x.jpg")
    assert good.returncode == 0, good.stderr
    (message,) = queued_messages(redis_client, [queue])
    redis_client.delete(queue)
    assert headers_of(message)[WEBHOOK_HEADER] == "http://h/in"


def _metrics(port: int) -> dict[str, float]:
    """The dispatcher's /metrics samples, by name with labels."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_deliveries_reuse_kept_alive_connections(setup: Setup, receiver: Receiver) -> None:
    """Forty deliveries to one receiver from two threads come over at most two connections
    (the receiver sees the client ports), each signed as usual."""
    for n in range(40):
        setup.event(f"t-keep-{n}", receiver.base + "/ok")
    port = free_port()
    setup.start(WEBHOOK_CONCURRENCY="2", METRICS_PORT=str(port), METRICS_ADDR="127.0.0.1")
    wait_for(lambda: len(receiver.to("/ok")) == 40, 30, "forty deliveries")
    requests = receiver.to("/ok")
    assert {verify(r)["id"] for r in requests} == {f"t-keep-{n}" for n in range(40)}
    assert 1 <= len({r.port for r in requests}) <= 2, {r.port for r in requests}
    made = _metrics(port)["imgqueue_webhook_connections_total"]
    assert made == len({r.port for r in requests})


def test_the_backlog_and_its_age_are_metrics(setup: Setup, receiver: Receiver) -> None:
    """One thread held by a hanging receiver: the dispatcher leases two (one running, one
    waiting for the thread) and the rest wait due; /metrics shows how many and for how long."""
    for n in range(5):
        setup.event(f"t-wait-{n}", receiver.base + "/hang")
    port = free_port()
    setup.start(
        WEBHOOK_CONCURRENCY="1",
        WEBHOOK_TIMEOUT="30",
        METRICS_PORT=str(port),
        METRICS_ADDR="127.0.0.1",
    )
    wait_for(lambda: receiver.to("/hang"), 20, "the first delivery")

    def backlog() -> dict[str, float] | None:
        got = _metrics(port)
        keep = {k: v for k, v in got.items() if k.startswith("imgqueue_webhook_backlog")}
        return keep if keep.get("imgqueue_webhook_backlog_age_seconds", 0) >= 1 else None

    seen = wait_for(backlog, 20, "a backlog a second old")
    assert seen['imgqueue_webhook_backlog{where="due"}'] == 3
    assert seen['imgqueue_webhook_backlog{where="later"}'] == 2  # leased
    assert seen['imgqueue_webhook_backlog{where="stream"}'] == 0  # all read and moved
    assert seen["imgqueue_webhook_backlog_age_seconds"] < 20
    assert len(receiver.to("/hang")) == 1
    receiver.release.set()  # the receiver answers: everything goes
    wait_for(lambda: len(receiver.to("/hang")) == 5, 30, "the rest")

    def drained() -> bool:
        got = _metrics(port)
        return got["imgqueue_webhook_backlog_age_seconds"] == 0 and not any(
            v for k, v in got.items() if k.startswith("imgqueue_webhook_backlog{")
        )

    wait_for(drained, 20, "an empty backlog")


def test_each_tenant_s_deliveries_verify_only_with_its_own_secret(
    setup: Setup, receiver: Receiver
) -> None:
    """An event's `tenant` picks the signing secret: the tenant's own (core.tenants), not
    WEBHOOK_SECRET nor another tenant's; no tenant, WEBHOOK_SECRET; a tenant that no longer
    exists, a dead letter, never signed with another secret nor sent."""
    config = RedisConfig(setup.env["REDIS_URL"], key_prefix=setup.prefix)
    _, acme = tenants.create_key(setup.r, config, "acme")
    _, globex = tenants.create_key(setup.r, config, "globex")
    ids = {"acme": acme.new_id(), "globex": globex.new_id()}
    setup.event(ids["acme"], receiver.base + "/acme", tenant="acme")
    setup.event(ids["globex"], receiver.base + "/globex", tenant="globex")
    setup.event("t-shared", receiver.base + "/shared", tenant="")
    setup.event("t-gone", receiver.base + "/gone?token=x", tenant="initech")
    d = setup.start()
    wait_for(lambda: len(receiver.requests) == 3 and setup.dead(), 20, "3 deliveries, 1 dead")
    (to_acme,), (to_globex,), (shared,) = (receiver.to(p) for p in ("/acme", "/globex", "/shared"))
    secrets = {"acme": acme.webhook_secret, "globex": globex.webhook_secret, "shared": SECRET}
    for name, request in (("acme", to_acme), ("globex", to_globex), ("shared", shared)):
        for other, secret in secrets.items():
            if other == name:
                assert verify(request, secret)["id"] in (ids.get(name), "t-shared")
            else:
                with pytest.raises(AssertionError):
                    verify(request, secret)
    # The documented receiver takes a tenant's secret as it is.
    namespace: dict[str, Any] = {}
    exec(documented("python"), namespace)
    assert (
        namespace["verify"](acme.webhook_secret, to_acme.headers, to_acme.body)["id"] == ids["acme"]
    )
    (dead,) = setup.dead()
    assert dead["reason"] == "tenant" and dead["tenant"] == "initech"
    assert "tenant 'initech' no longer exists" in dead["error"] and dead["status"] is None
    assert receiver.to("/gone?token=x") == []
    assert acme.webhook_secret not in d.log() and globex.webhook_secret not in d.log()
