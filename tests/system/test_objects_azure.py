"""`az://` sources end to end, through the same obstore code as `s3://`: one real stand-in worker
reads objects from the loopback Azure Blob emulator (tests/support/azurite.py), and
`imgqueue submit` lists a prefix."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.azurite import MISSING, SET_IMAGES, Azurite, azurite  # noqa: F401
from tests.support.cli import run_cli
from tests.support.workers import WorkerFactory


@pytest.fixture(scope="module")
def worker(workers: WorkerFactory, azurite: Azurite) -> Iterator[None]:  # noqa: F811
    workers.base_env.update(azurite.env)  # this module's workers only
    workers.start(MODEL="sleep:0ms", MODEL_WEIGHTS="IMAGENET1K_V2")
    yield


def test_a_worker_reads_az_objects_and_names_what_is_missing(
    worker: None,
    azurite: Azurite,  # noqa: F811
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in azurite.env.items():  # the CLI lists the prefix in this process
        monkeypatch.setenv(name, value)
    sources = [
        azurite.url("cat.jpg"),
        azurite.url("set/"),
        azurite.url("missing.jpg"),
        azurite.url("cat.jpg", container=MISSING),
    ]
    code, out, err = run_cli(capsys, redis_url, "submit", "--wait", "--timeout", "60", *sources)
    assert code == 1, err  # the two missing ones failed
    outcomes = [json.loads(line) for line in out.splitlines()]
    succeeded = {o["result"]["source"]: o["result"] for o in outcomes if o["state"] == "SUCCESS"}
    assert sorted(succeeded) == sorted([sources[0], *(azurite.url(k) for k in SET_IMAGES)])
    png = succeeded[azurite.url("set/b.png")]["image"]
    assert (png["width"], png["height"], png["format"]) == (10, 12, "PNG")
    failed = {o["error"]["type"] for o in outcomes if o["state"] == "FAILURE"}
    assert failed == {"SourceNotFound"}, outcomes
    assert len(outcomes) == 5  # cat, the set's two images, the two missing
