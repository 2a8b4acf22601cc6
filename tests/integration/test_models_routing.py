"""Several models side by side, without a worker: producers route by name (`model.<name>`), a
name no worker registered is refused at submit (UnknownModel), the registry is read once per
call and cached, and the exporter knows every model. A private redis-server, the Client and the
exporter's collector."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from core.connections import RedisConfig
from core.models import (
    Registry,
    forget,
    models_key,
    register,
    registered,
)
from producer import Client, UnknownModel
from services.exporter import QueueCollector, routes
from tests.support.model_registry import (
    ALPHA,
    r_fixture,  # noqa: F401  (the fixture `r`)
    server_fixture,  # noqa: F401  (the fixture `server`)
    waiting,
)
from tests.support.redis_server import RedisServer


def calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


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
