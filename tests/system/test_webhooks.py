"""Webhooks end to end: a real worker writes the events, the dispatcher (a real process) POSTs
them to a loopback receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer import Client
from tests.support.paths import ROOT, SAMPLES
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
