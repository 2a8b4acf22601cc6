"""Several models side by side on two real workers of two models (the stand-in model, so they
are ready in seconds) on the session's Redis; and, with no worker on a private redis-server, the
CLI as a process refusing a model nobody serves, and the shipped ACL users' rights."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.connections import RedisConfig
from core.models import (
    forget,
    register,
    registered,
)
from producer import Client, UnknownModel
from producer.status import gather, render
from tests.support.cli import imgqueue as cli
from tests.support.cli import run_cli
from tests.support.model_registry import (
    ALPHA,
    r_fixture,  # noqa: F401  (the fixture `r`)
    server_fixture,  # noqa: F401  (the fixture `server`)
    waiting,
)
from tests.support.redis_server import RedisServer, with_shipped_users
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


# -- the CLI as a process and the shipped ACL users, no worker ---------------------------------


def test_cli_submit_model_and_the_model_commands(
    server: RedisServer, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url()
    register(r, RedisConfig(), ALPHA)
    code, out, err = run_cli(capsys, url, "submit", "--model", "alpha", "cat.jpg", "dog.jpg")
    assert code == 0, err
    assert len(out.split()) == 2 and waiting(r, "model.alpha") == 1  # one bulk message
    # As a user sees it: its own exit status, the error, nothing sent.
    shell = cli(url, "submit", "--model", "nope", "cat.jpg")
    assert shell.returncode == 6 and shell.stdout == ""
    assert "error: no worker serves model 'nope'" in shell.stderr
    code, _, err = run_cli(capsys, url, "submit", "--model", "alpha", "--queue", "celery", "x")
    assert code == 2 and "disagree" in err
    assert run_cli(capsys, url, "submit", "--model", "Alpha", "cat.jpg")[0] == 2  # a bad name
    assert waiting(r, "celery", "model.alpha", "model.nope") == 1

    listed = json.loads(run_cli(capsys, url, "model", "list", "--json")[1])
    assert [(m["name"], m["queue"], m["version"]) for m in listed] == [
        ("alpha", "model.alpha", "1")
    ]
    human = run_cli(capsys, url, "model", "list")[1].splitlines()
    assert human[0].split()[:4] == ["name", "model", "arch", "version"]
    assert human[1].split()[:4] == ["alpha", "alpha", "resnet50", "1"]
    code, out, _ = run_cli(capsys, url, "model", "forget", "alpha")
    assert code == 0 and "forgotten" in out
    assert run_cli(capsys, url, "submit", "--model", "alpha", "cat.jpg")[0] == 6
    assert "was not registered" in run_cli(capsys, url, "model", "forget", "alpha")[2]
    assert run_cli(capsys, url, "model", "--help")[0] == 0


def test_shipped_users_route_to_models_and_only_workers_register(tmp_path: Path) -> None:
    server = with_shipped_users(tmp_path)
    base = f"127.0.0.1:{server.port}/0"
    worker = redis.Redis(port=server.port, username="worker", password="imgqueue-worker-dev")
    admin = redis.Redis(port=server.port, username="admin", password="imgqueue-admin-dev")
    try:
        register(worker, RedisConfig(), ALPHA)  # a worker registers its model
        with Client(f"redis://producer:imgqueue-producer-dev@{base}", bulk_size=1) as producer:
            producer.submit("cat.jpg", model="alpha", priority=3)
            producer.submit_many(["a.jpg", "b.jpg"], model="alpha")
            with pytest.raises(UnknownModel):
                producer.submit("cat.jpg", model="beta")
            assert waiting(admin, "model.alpha") == 3
            assert list(registered(producer.redis, producer.config)) == ["alpha"]
            for attempt in (
                lambda: register(producer.redis, producer.config, {"name": "forged"}),
                lambda: forget(producer.redis, producer.config, "alpha"),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()
        out = cli(f"redis://producer:imgqueue-producer-dev@{base}", "model", "forget", "alpha")
        assert out.returncode == 3 and "admin user" in out.stderr
        assert forget(admin, RedisConfig(), "alpha")  # operators forget
    finally:
        worker.close()
        admin.close()
        server.stop()
