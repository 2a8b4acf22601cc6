"""Alerts and the dashboard: Prometheus's own promtool checks and tests the rules, and every
expression in the alerts and the Grafana dashboard parses and names only metrics and label
values the worker and the exporter really export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import Collector
from ruamel.yaml import YAML

from core.connections import RedisConfig
from producer.queues import QueueStats, Snapshot
from services.exporter import QueueCollector
from tests.support.paths import ROOT
from worker.metrics import Metrics

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "imgqueue.json"
# Grafana's variables, replaced by what they expand to for promtool.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$queue": ".*",
    "${queue}": ".*",
    "$model": ".*",
    "${model}": ".*",
}
# Label values the code emits (worker/joblog.py, worker/metrics.py, services/exporter.py).
LABEL_VALUES = {
    "outcome": {"success", "failure", "retry"},
    "result": {"hit", "miss"},
    "state": {"live", "stale"},
    "job": {"imgqueue-worker", "imgqueue-exporter"},  # deploy/prometheus.yml's job names
}


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: install Debian's prometheus (scripts/test.sh does)")
    return exe


def run_promtool(*args: str, cwd: Path) -> str:
    out = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


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


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def alert_exprs() -> Iterator[tuple[str, str]]:
    for group in YAML(typ="safe").load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def test_alert_rules_pass_promtool_check() -> None:
    out = run_promtool("check", "rules", str(ALERTS), cwd=ROOT)
    assert "SUCCESS" in out


def test_alert_rules_fire_on_their_series_and_only_then() -> None:
    # alerts.test.yml: each alert with a series that fires it and one that must not.
    out = run_promtool("test", "rules", "alerts.test.yml", cwd=ALERTS.parent)
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS.parent / "alerts.test.yml").read_text()))
    assert tested == {name for name, _ in alert_exprs()}


def test_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    config = YAML(typ="safe").load((ROOT / "deploy" / "prometheus.yml").read_text())
    # The compose file mounts alerts.yml at /etc/prometheus/alerts.yml.
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    run_promtool("check", "config", str(tmp_path / "prometheus.yml"), cwd=tmp_path)
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == LABEL_VALUES["job"]


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    # promtool has no query parser of its own; recording rules go through the same one.
    rules = [
        {"record": f"imgqueue:dashboard_check_{i}", "expr": expand(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    (tmp_path / "rules.yml").write_text(json.dumps({"groups": [{"name": "d", "rules": rules}]}))
    assert "SUCCESS" in run_promtool("check", "rules", "rules.yml", cwd=tmp_path)


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
