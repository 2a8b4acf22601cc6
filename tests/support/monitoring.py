"""The alert rules and the Grafana dashboard as data: where they are, their expressions, and the
label values the code emits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ruamel.yaml import YAML

from tests.support.paths import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "imgqueue.json"

# Label values the code emits (worker/joblog.py, worker/metrics.py, services/exporter.py).
LABEL_VALUES = {
    "outcome": {"success", "failure", "retry"},
    "result": {"hit", "miss"},
    "state": {"live", "stale"},
    "job": {"imgqueue-worker", "imgqueue-exporter"},  # deploy/prometheus.yml's job names
}


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
