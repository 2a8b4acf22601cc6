"""Several models side by side, in this process: the routing convention (`model.<name>`) and
status grouping workers by model (tests/integration and tests/system: on Redis)."""

from __future__ import annotations

import pytest

from core.models import (
    BadModelName,
    queue_for,
)
from producer.client import route
from producer.status import per_model


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
