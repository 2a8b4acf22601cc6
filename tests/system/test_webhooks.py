"""Webhooks end to end: a real worker writes the events, the dispatcher (a real process) POSTs
them to a loopback receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import Client
from tests.support.paths import SAMPLES
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
