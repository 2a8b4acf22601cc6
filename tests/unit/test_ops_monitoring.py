"""Alerts and the dashboard: every expression in the alerts and the Grafana dashboard names only
metrics and label values the worker and the exporter really export, the dashboard covers the
operations signals, and the compose file provisions and scrapes them (tests/system: promtool)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.registry import Collector
from ruamel.yaml import YAML

from core.connections import RedisConfig
from producer.queues import QueueStats, Snapshot
from services.exporter import QueueCollector
from tests.support.monitoring import (
    DASHBOARD,
    LABEL_VALUES,
    alert_exprs,
    dashboard,
    dashboard_exprs,
)
from tests.support.paths import ROOT
from worker.metrics import Metrics


class _Fixed(QueueCollector):
    def registered(self) -> dict[str, dict[str, Any]]:
        return {"defects": {"name": "defects", "model": "defects", "queue": "model.defects"}}

    def read(self, registered: dict[str, dict[str, Any]] | None = None) -> Snapshot:
        queues = [QueueStats("celery", {0: 1}, 0), QueueStats("model.defects", {0: 2}, 1)]
        return Snapshot(queues, 0, 1, 0)


def exported_names() -> set[str]:
    """Every sample name a worker (its registry) or the exporter can produce."""
    exporter: Collector = _Fixed(None, RedisConfig.from_env({}), ["celery"], 15.0)
    names: set[str] = set()
    for collector in (Metrics().registry, exporter):
        for family in collector.collect():
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count"),
            }.get(family.type, ("",))
            names.update(family.name + s for s in suffixes)
    return names


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_expressions_use_only_exported_metrics_and_labels(source: str) -> None:
    known = exported_names()
    exprs = list(alert_exprs() if source == "alerts" else dashboard_exprs())
    assert exprs
    for where, expr in exprs:
        for name in re.findall(r"\b((?:imgqueue|process)_[a-z_]+)\b", expr):
            assert name in known, f"{where}: {name} is not exported"
        for label, value in re.findall(r'\b([a-z_]+)="([^"]*)"', expr):
            if label in LABEL_VALUES:
                assert value in LABEL_VALUES[label], f"{where}: {label}={value}"


def test_dashboard_covers_the_operations_signals() -> None:
    data = dashboard()
    assert data["uid"] == "imgqueue"
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used = " ".join(expr for _, expr in dashboard_exprs())
    for metric in (
        "imgqueue_queue_depth",
        "imgqueue_jobs_in_flight",
        "imgqueue_dead_letters",
        "imgqueue_ready",
        "imgqueue_jobs_total",
        "imgqueue_job_failures_total",
        "imgqueue_images_inferred_total",
        "imgqueue_batch_size_sum",
        "imgqueue_queue_wait_seconds_bucket",
        "imgqueue_model_queue_depth",
        "imgqueue_model_info",
    ):
        assert metric in used, metric
    # Per model: a `model` variable from the workers' info metric, and panels filtered by it.
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert "imgqueue_model_info" in variables["model"]["definition"]
    per_model = [expr for _, expr in dashboard_exprs() if 'model=~"$model"' in expr]
    assert any("imgqueue_model_queue_depth" in e for e in per_model)
    assert any("imgqueue_images_inferred_total" in e for e in per_model)
    # Portable: every query goes through the datasource variable, so the JSON imports anywhere.
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # No two panels overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in xs for y in ys}
        assert g["x"] + g["w"] <= 24 and not (mine & cells), panel["title"]
        cells |= mine


def test_compose_provisions_grafana_and_the_exporter() -> None:
    services = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("exporter", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    assert services["exporter"]["entrypoint"] == ["python", "-m", "services.exporter"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provider = YAML(typ="safe").load(
        (ROOT / "deploy/grafana/provisioning/dashboards/imgqueue.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert (ROOT / mounts[path] / DASHBOARD.name).resolve() == DASHBOARD.resolve()


def test_prometheus_scrapes_every_worker_service_of_the_compose_file() -> None:
    services = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    workers = {name for name in services if name.startswith("worker")}
    assert {"worker", "worker-cpu", "worker-defects"} <= workers
    config = YAML(typ="safe").load((ROOT / "deploy" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "imgqueue-worker")
    assert set(job["dns_sd_configs"][0]["names"]) == workers


def test_the_exporter_and_the_workers_label_a_model_alike() -> None:
    """imgqueue_model_queue_depth's `model` is the label a worker's imgqueue_model_info
    carries, so the dashboard joins them."""
    from worker.metrics import Metrics

    metrics = Metrics()
    metrics.set_model({"model": "defects", "name": "defects", "arch": "resnet50", "version": "3"})
    info = {
        s.labels["model"]: s.labels
        for f in metrics.registry.collect()
        if f.name == "imgqueue_model_info"
        for s in f.samples
    }
    assert info["defects"]["version"] == "3" and info["defects"]["labels"] == ""
    exporter = _Fixed(None, RedisConfig.from_env({}), ["celery"], 15.0)
    depth = {
        s.labels["model"]: (s.labels["queue"], s.value)
        for f in exporter.collect()
        if f.name == "imgqueue_model_queue_depth"
        for s in f.samples
    }
    assert depth == {"defects": ("model.defects", 2)}
