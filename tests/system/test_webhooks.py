"""Webhooks end to end: a real worker writes the events, the dispatcher (a real process) POSTs
them to a loopback receiver; on one Redis, and on a real Redis Cluster past a worker killed
between a result and its event."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.connections import ResultStoreConfig
from core.keys import outbox_key
from core.lifecycle import EVENTS_STREAM
from producer import Client
from tests.support.paths import ROOT, SAMPLES
from tests.support.redis_cluster import RedisClusterNodes
from tests.support.waiting import wait_for
from tests.support.webhooks import (
    Receiver,
    Setup,
    receiver_fixture,  # noqa: F401  (the fixture `receiver`)
    setup_fixture,  # noqa: F401  (the fixture `setup`)
    verify,
)
from tests.support.workers import WorkerFactory


@pytest.fixture
def stand_in_workers(setup: Setup, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Workers running the fixed-latency stand-in model on the samples, with this test's
    prefix (no weights to make: the stand-in needs none)."""
    env = {
        **setup.env,
        "MODEL": "sleep:1ms",
        "MODEL_WEIGHTS": "random:0",
        "IMAGE_ROOT": str(SAMPLES),
        "DEVICE": "cpu",
        "DECODE_PROCESSES": "1",
    }
    factory = WorkerFactory(env, tmp_path)
    yield factory
    factory.stop_all()


def _documented_bodies() -> list[dict[str, Any]]:
    """docs/lifecycle.md's examples under *What is POSTed*: a success, a failure, a group."""
    text = (ROOT / "docs/lifecycle.md").read_text()
    block = text.split("\n### What is POSTed\n", 1)[1].split("```json\n", 1)[1]
    return [json.loads(line) for line in block.split("```", 1)[0].splitlines()]


def _documented_result() -> dict[str, Any]:
    """docs/contract.md's example of a successful job's result."""
    text = (ROOT / "docs/contract.md").read_text()
    block = text.split("\n## Results\n", 1)[1].split("```json\n", 1)[1]
    result: dict[str, Any] = json.loads(block.split("```", 1)[0])
    return result


def _shape(value: Any) -> Any:
    """The keys of every object, nested (a list's by its first item), without the values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return None


def test_a_real_worker_end_to_end(
    setup: Setup, receiver: Receiver, stand_in_workers: WorkerFactory
) -> None:
    """Jobs submitted with webhooks, run by a real worker (which writes the events), delivered
    by the dispatcher: a single job, a bulk message's images and a group's one summary."""
    worker = stand_in_workers.start(wait=False)
    setup.start()
    worker.wait_ready()
    with Client(setup.env["REDIS_URL"], key_prefix=setup.prefix) as client:
        one = client.submit("cat.jpg", webhook=receiver.base + "/one")
        bulk = client.submit_many(
            ["coffee.jpg", "no-such.jpg"], webhook=receiver.base + "/bulk", bulk_size=64
        )
        group = client.submit_many(
            ["cat.jpg", "coffee.jpg", "rocket.jpg"], group=True, webhook=receiver.base + "/group"
        )
    wait_for(
        lambda: receiver.to("/one") and len(receiver.to("/bulk")) == 2 and receiver.to("/group"),
        30,
        "deliveries (the dispatcher sends them in any order)",
    )
    (single,) = receiver.to("/one")
    body = verify(single)
    assert body["id"] == one and body["state"] == "SUCCESS" and body["result"]["predictions"]
    by_id = {verify(r)["id"]: verify(r) for r in receiver.to("/bulk")}
    assert by_id[bulk[0]]["state"] == "SUCCESS"
    assert by_id[bulk[1]]["error"]["type"] == "SourceNotFound"
    (done,) = receiver.to("/group")
    summary = verify(done)
    assert done.headers["webhook-id"] == f"group_{group.group_id}"  # type: ignore[attr-defined]
    assert summary["type"] == "group" and summary["id"] == group.group_id  # type: ignore[attr-defined]
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (3, 3, 0)
    assert len(receiver.requests) == 4  # a group's jobs have no webhook of their own
    # The docs show what is sent, key for key (the stand-in model's results add a warning).
    success, failure, finished = _documented_bodies()
    body["result"].pop("warning")
    assert _shape(success) == _shape(body)
    assert _shape(_documented_result()) == _shape(body["result"])
    assert _shape(failure) == _shape(by_id[bulk[1]])
    assert _shape(finished) == _shape(summary)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster for the results: three masters, a replica each."""
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("webhooks-cluster")).start()
    yield nodes
    nodes.stop()


def test_a_worker_killed_between_result_and_event_on_a_cluster_still_posts(
    setup: Setup,
    receiver: Receiver,
    stand_in_workers: WorkerFactory,
    cluster: RedisClusterNodes,
) -> None:
    """RESULT_URL on a real Redis Cluster: the result and the event are separate calls there.
    A worker SIGKILLed right after storing a job's result, before its event
    (TEST_KILL_AFTER_RESULT), left the intent the outbox keeps; a dispatcher appends the
    event from it (EVENTS_SWEEP_AFTER later) and the webhook arrives, with the result."""
    worker = stand_in_workers.start(RESULT_URL=cluster.url(), TEST_KILL_AFTER_RESULT="1")
    with Client(setup.env["REDIS_URL"], result_url=cluster.url(), key_prefix=setup.prefix) as c:
        task = c.submit("cat.jpg", webhook=receiver.base + "/killed")
        wait_for(lambda: not worker.alive(), 60, "the worker to kill itself after the result")
        assert worker.proc.returncode == -signal.SIGKILL
        assert "TEST_KILL_AFTER_RESULT" in worker.log()
        (stored,) = c._fetch([task])
        assert stored.state == "SUCCESS"  # the result is there, on a replica too (WAIT)
    store = ResultStoreConfig(cluster.url()).client()
    stream = setup.prefix + EVENTS_STREAM
    outbox = outbox_key(stream)
    assert outbox is not None
    try:
        # Without the outbox this job would never be announced: no event, no webhook.
        assert [f for _, f in store.xrange(stream) if f[b"id"] == task.encode()] == []
        assert store.hget(outbox, f"job:{task}") is not None
        d = setup.start(RESULT_URL=cluster.url(), EVENTS_SWEEP_AFTER="1")
        (request,) = wait_for(lambda: receiver.to("/killed"), 30, "the webhook of the killed job")
        body = verify(request)
        assert body["id"] == task and body["state"] == "SUCCESS" and body["result"]["predictions"]
        assert request.headers["webhook-id"] == f"job_{task}"
        (event,) = [f for _, f in store.xrange(stream) if f[b"id"] == task.encode()]
        assert event[b"state"] == b"SUCCESS" and event[b"webhook"] == b"%s/killed" % (
            receiver.base.encode()
        )
        assert store.hlen(outbox) == 0
        assert "appended 1 completion event(s) a worker stored the result of" in d.log()
    finally:
        for key in (stream, outbox):
            store.delete(key)
        store.close()
