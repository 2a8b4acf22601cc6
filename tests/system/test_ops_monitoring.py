"""Alerts and the dashboard through Prometheus's own promtool (a process): it checks and tests
the rules, loads them from the Prometheus config, and parses every dashboard expression."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.support.monitoring import ALERTS, LABEL_VALUES, alert_exprs, dashboard_exprs
from tests.support.paths import ROOT

# Grafana's variables, replaced by what they expand to for promtool.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$queue": ".*",
    "${queue}": ".*",
    "$model": ".*",
    "${model}": ".*",
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
