"""Several models side by side, without a worker: producers route by name (`model.<name>`), a
name no worker registered is refused at submit (UnknownModel), and status, the exporter and the
shipped ACL users know every model. A private redis-server, the Client, the CLI and the
exporter's collector."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.connections import RedisConfig
from core.models import (
    BadModelName,
    Registry,
    forget,
    models_key,
    queue_for,
    register,
    registered,
)
from producer import Client, UnknownModel
from producer.client import route
from producer.status import per_model
from services.exporter import QueueCollector, routes
from tests.support.cli import imgqueue as cli
from tests.support.cli import run_cli
from tests.support.messages import queued_messages
from tests.support.redis_server import RedisServer, with_shipped_users

ALPHA = {"name": "alpha", "model": "alpha", "arch": "resnet50", "version": "1", "weights": "w1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("models")).start()
    yield srv
    srv.stop()


@pytest.fixture
def r(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    client.flushdb()
    client.config_resetstat()
    yield client
    client.flushdb()
    client.close()


def waiting(r: redis.Redis, *queues: str) -> int:
    return len(queued_messages(r, list(queues)))


def calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


# -- routing and the registry, no worker -----------------------------------------------------


def test_the_routing_convention() -> None:
    assert queue_for(None) == queue_for("") == "celery"
    assert queue_for("defects") == "model.defects"
    with pytest.raises(BadModelName):
        queue_for("Defects")
    assert route("celery", None) == "celery"
    assert route("celery", "defects", queue_given=False) == "model.defects"
    assert route("model.defects", "defects") == "model.defects"  # both, agreeing
    with pytest.raises(ValueError, match="disagree"):
        route("gpu", "defects")


def test_the_registry_holds_one_entry_per_served_name(server: RedisServer, r: redis.Redis) -> None:
    config = RedisConfig(key_prefix="t1:")
    assert models_key(config) == "t1:imgqueue:models"
    register(r, config, {**ALPHA, "device": "cpu", "precision": "fp32"})
    register(r, config, {"name": "", "model": "resnet50", "arch": "resnet50", "version": None})
    r.hset(models_key(config), "odd", b"not json")  # kept: it still names a served model
    entries = registered(r, config)
    assert list(entries) == ["", "alpha", "odd"]
    alpha = entries["alpha"]
    assert set(alpha) == {"name", "model", "arch", "version", "weights", "labels", "queue", "seen"}
    assert (alpha["queue"], alpha["version"], alpha["labels"]) == ("model.alpha", "1", None)
    assert entries[""]["queue"] == "celery" and entries["odd"]["queue"] == "model.odd"
    assert registered(r, RedisConfig()) == {}  # another prefix, another registry
    assert forget(r, config, "odd") and not forget(r, config, "odd")


def test_submit_routes_by_model_and_refuses_an_unknown_one(
    server: RedisServer, r: redis.Redis
) -> None:
    register(r, RedisConfig(), ALPHA)
    with Client(server.url(), bulk_size=2) as client:
        client.submit("cat.jpg", model="alpha")
        client.submit_many(["a.jpg", "b.jpg", "c.jpg"], model="alpha", priority=5)  # 2 messages
        assert waiting(r, "model.alpha") == 3 and waiting(r, "celery") == 0
        body = json.loads(r.lpop("model.alpha") or b"{}")
        assert body["properties"]["delivery_info"]["routing_key"] == "model.alpha"
        client.submit("cat.jpg", model="alpha", queue="model.alpha")  # agreeing: fine
        client.submit("cat.jpg")  # no model: the default queue, never checked
        assert waiting(r, "celery") == 1
        before = waiting(r, "celery", "model.alpha", "model.beta")
        with pytest.raises(UnknownModel) as caught:
            client.submit_many(["a.jpg", "b.jpg"], model="beta")
        assert caught.value.model == "beta" and caught.value.known == ["alpha"]
        assert "no worker serves model 'beta'" in str(caught.value)
        with pytest.raises(UnknownModel):
            client.submit("cat.jpg", model="")  # the default model: no worker registered it
        with pytest.raises(ValueError, match="disagree"):
            client.submit("cat.jpg", model="alpha", queue="celery")
        assert waiting(r, "celery", "model.alpha", "model.beta") == before  # nothing sent


def test_the_registry_is_read_once_per_call_and_cached(server: RedisServer, r: redis.Redis) -> None:
    register(r, RedisConfig(), ALPHA)
    now = [100.0]
    with Client(server.url(), bulk_size=1) as client:
        client.models = Registry(client.redis, client.config, clock=lambda: now[0])
        client.submit_many(["cat.jpg"] * 20, model="alpha")
        assert calls(r, "hgetall") == 1  # one read for 20 messages
        client.submit("cat.jpg", model="alpha")
        assert calls(r, "hgetall") == 1  # cached
        # A model that registered after the cached read is found at once: one more read.
        register(r, RedisConfig(), {**ALPHA, "name": "beta", "model": "beta"})
        client.submit("cat.jpg", model="beta")
        assert calls(r, "hgetall") == 2
        with pytest.raises(UnknownModel):
            client.submit("cat.jpg", model="gamma")  # missing from a cached read: read again
        assert calls(r, "hgetall") == 3
        now[0] += 5.0
        forget(r, RedisConfig(), "alpha")
        with pytest.raises(UnknownModel):  # past the TTL a forgotten model is refused
            client.submit("cat.jpg", model="alpha")
        assert calls(r, "hgetall") == 4


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


def test_a_worker_registers_best_effort(
    server: RedisServer, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    from worker import ops
    from worker.settings import Settings

    description = {**ALPHA, "device": "cpu", "precision": "fp32", "pretrained": False}
    ops.register(Settings.from_env({"REDIS_URL": server.url()}), description)
    assert registered(r, RedisConfig())["alpha"]["weights"] == "w1"
    # Redis unreachable: a warning, and the worker goes on.
    caplog.set_level(logging.WARNING, logger="worker.ops")
    ops.register(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}), description)
    assert "could not register model alpha in imgqueue:models" in caplog.text
    # A model that does not say its served name gets it from the settings.
    named = ops.identity({"model": "resnet50"}, Settings.from_env({"MODEL_NAME": "beta"}))
    assert named["name"] == "beta"


def test_the_exporter_reports_each_registered_models_queue(
    server: RedisServer, r: redis.Redis
) -> None:
    register(r, RedisConfig(), ALPHA)
    register(r, RedisConfig(), {"name": "", "model": "resnet50", "arch": "resnet50"})
    with Client(server.url(), bulk_size=1) as client:
        client.submit_many(["cat.jpg"] * 3, model="alpha", priority=7)
        client.submit_many(["cat.jpg"] * 2)
    collector = QueueCollector(r, RedisConfig(), ["celery"], 15.0)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }
    assert (
        samples[("imgqueue_model_queue_depth", (("model", "alpha"), ("queue", "model.alpha")))] == 3
    )
    assert (
        samples[("imgqueue_model_queue_depth", (("model", "resnet50"), ("queue", "celery")))] == 2
    )
    assert samples[("imgqueue_queue_depth", (("queue", "model.alpha"),))] == 3
    code, body, _ = routes(collector)["/queues"]()
    doc = json.loads(body)
    assert code == 200 and doc["models"]["alpha"]["depth"] == 3  # KEDA: models.alpha.depth
    assert doc["models"]["resnet50"] == {
        "name": "",
        "queue": "celery",
        "version": None,
        "depth": 2,
        "in_flight": 0,
    }


def test_status_groups_workers_by_model() -> None:
    registry = {
        "": {"name": "", "model": "resnet50", "arch": "resnet50", "queue": "celery"},
        "gone": {"name": "gone", "model": "gone", "version": "7", "queue": "model.gone"},
    }
    workers = {
        "a@h": {"name": "alpha", "model": "alpha", "arch": "resnet50", "version": "1", "ready": 1},
        "b@h": {"name": "alpha", "model": "alpha", "arch": "resnet50", "version": "2", "ready": 0},
        "c@h": {"model": "resnet50", "ready": True},  # a worker from before names: the default
        "d@h": {"ready": None, "note": "answered ping only"},
    }
    queues = {"model.alpha": {"depth": 4, "in_flight": 2}, "celery": {"depth": 1, "in_flight": 0}}
    rows = {m["name"]: m for m in per_model(registry, workers, queues)}
    assert list(rows) == ["", "alpha", "gone"]
    alpha = rows["alpha"]
    assert (alpha["queue"], alpha["depth"], alpha["in_flight"]) == ("model.alpha", 4, 2)
    assert alpha["workers"] == ["a@h", "b@h"] and alpha["ready_workers"] == 1
    assert alpha["versions"] == ["1", "2"] and not alpha["registered"]  # mid-rollout
    assert rows[""]["workers"] == ["c@h"] and rows[""]["depth"] == 1
    assert rows["gone"]["workers"] == [] and rows["gone"]["versions"] == ["7"]


# -- the shipped ACL users -------------------------------------------------------------------


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
