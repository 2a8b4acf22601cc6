"""Several models side by side on two real workers of two models (the stand-in model, so they
are ready in seconds) on the session's Redis."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from core.models import (
    register,
    registered,
)
from producer import Client, UnknownModel
from producer.status import gather, render
from tests.support.cli import run_cli
from tests.support.workers import WorkerFactory, WorkerProcess

# -- two models, two real workers ------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(workers: WorkerFactory) -> Iterator[dict[str, WorkerProcess]]:
    """Workers of two models at once: alpha (stand-in, 1 ms) and beta (stand-in, 2 ms)."""
    started = {
        "alpha": workers.start(wait=False, MODEL="sleep:1ms", MODEL_NAME="alpha"),
        "beta": workers.start(wait=False, MODEL="sleep:2ms", MODEL_NAME="beta"),
    }
    for worker in started.values():
        worker.wait_ready()
    yield started
    for worker in started.values():  # both drain at once
        worker.kill(signal.SIGTERM)
    workers.stop_all()


def test_two_models_on_two_queues_at_once(
    two_models: dict[str, WorkerProcess], redis_url: str
) -> None:
    with Client(redis_url) as client:
        entries = registered(client.redis, client.config)
        assert {n: e["queue"] for n, e in entries.items()} == {
            "alpha": "model.alpha",
            "beta": "model.beta",
        }
        ids = {
            "alpha": client.submit_many(["cat.jpg"] * 5, model="alpha", bulk_size=2),
            "beta": client.submit_many(["cat.jpg", "coffee.jpg"], model="beta", bulk_size=1),
        }
        ids["beta"].append(client.submit("cat.jpg", model="beta", priority=9))
        # The arch tells the two workers apart: each job ran on its own model's worker.
        arch = {"alpha": "sleep:1ms", "beta": "sleep:2ms"}
        for name, task_ids in ids.items():
            outcomes = list(client.wait(task_ids, timeout=60))
            assert len(outcomes) == len(task_ids)
            for outcome in outcomes:
                result = outcome.unwrap()
                assert (result["name"], result["model"], result["arch"]) == (
                    name,
                    name,
                    arch[name],
                )
        with pytest.raises(UnknownModel):
            client.submit("cat.jpg", model="gamma")


def test_cli_model_route_and_status_list_both_models(
    two_models: dict[str, WorkerProcess], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("submit", "--wait", "--timeout", "60", "--model", "beta", "cat.jpg")
    code, out, err = run_cli(capsys, redis_url, *args)
    assert code == 0, err
    assert json.loads(out)["result"]["name"] == "beta"
    with Client(redis_url) as client:
        # Registered once, no live worker now: listed, with what its entry says.
        register(client.redis, client.config, {"name": "gone", "model": "gone", "version": "7"})
        state = gather(client, ["celery"], timeout=1.0)
    models = {m["name"]: m for m in state["models"]}
    assert set(models) == {"alpha", "beta", "gone"}
    for name, worker in two_models.items():
        m = models[name]
        assert (m["queue"], m["ready_workers"], m["registered"]) == (f"model.{name}", 1, True)
        (node,) = m["workers"]
        assert state["workers"][node]["pid"] == worker.pid
        assert state["workers"][node]["queue"] == f"model.{name}"
        assert state["queues"][f"model.{name}"]["depth"] == 0
    assert models["gone"]["workers"] == [] and models["gone"]["versions"] == ["7"]
    assert json.loads(json.dumps(state)) == state  # what `status --json` prints
    human = render(state)
    assert "NO WORKER" in human and "model.alpha" in human and "1/1 ready" in human
