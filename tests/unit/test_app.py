"""The app without import side effects: importing any module under `worker` reads no
environment, connects no signal, registers no metric and loads no torch; `create_app(settings)`
builds independent apps whose hooks act for their own worker only; every setting declares its
parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from celery import signals

from tests.support.paths import ROOT
from worker.celery_app import create_app
from worker.context import configure_openmp
from worker.settings import Settings

# Imports every module under worker/ with os.environ replaced by a recorder, then reports what
# the worker's own code read, which signals have receivers, and what else got loaded.
_PROBE = r"""
import importlib, json, os, sys, traceback
ROOT = sys.argv[1]
reads = []

class Recorder(dict):
    def _note(self, key):
        # The innermost caller that is not os.getenv or a Mapping method: who read it.
        for frame in reversed(traceback.extract_stack()[:-2]):
            if frame.filename.endswith(("os.py", "<frozen os>", "_collections_abc.py")):
                continue
            if frame.filename.startswith(os.path.join(ROOT, "worker")):
                reads.append(f"{key} at {frame.filename}:{frame.lineno}")
            break
    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)
    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)
    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)
    def __setitem__(self, key, value):
        self._note(f"{key} (written)")
        super().__setitem__(key, value)
    def setdefault(self, key, value=None):
        self._note(f"{key} (written)")
        return super().setdefault(key, value)

before = dict(os.environ)
os.environ = Recorder(os.environ)
import worker
# From the files, not pkgutil.walk_packages: that imports every subpackage to list it.
base = os.path.join(ROOT, "worker")
names = []
for d, _, files in os.walk(base):
    for f in files:
        if f.endswith(".py") and not (f == "__init__.py" and d == base):
            rel = os.path.relpath(os.path.join(d, f), base)[:-3].replace(os.sep, ".")
            names.append("worker." + rel.removesuffix(".__init__"))
names.sort()
light = [n for n in names if not n.startswith(("worker.model", "worker.batcher", "worker.runtime",
         "worker.pipeline", "worker.imaging", "worker.sandbox"))]
for name in light:
    importlib.import_module(name)
torch_after_light = "torch" in sys.modules
for name in names:
    importlib.import_module(name)
from celery import signals
from prometheus_client import REGISTRY
from kombu.transport import TRANSPORT_ALIASES
receivers = {n: len(getattr(signals, n).receivers) for n in (
    "worker_init", "worker_process_init", "worker_shutdown", "import_modules",
    "after_setup_logger", "after_setup_task_logger")}
print(json.dumps({
    "modules": names,
    "reads": reads,
    "env_changed": sorted(k for k in set(os.environ) | set(before)
                          if os.environ.get(k) != before.get(k)),
    "receivers": receivers,
    "imgqueue_metrics": [n for n in REGISTRY._names_to_collectors if n.startswith("imgqueue")],
    "transports": sorted(TRANSPORT_ALIASES),
    "torch_after_light": torch_after_light,
    "has_app": "_app" in vars(worker) and bool(vars(worker)["_app"]),
}))
"""


def test_importing_any_worker_module_has_no_side_effects() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GOMP_SPINCOUNT", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "worker.celery_app" in report["modules"] and "worker.tasks" in report["modules"]
    assert report["reads"] == []
    # GOMP_SPINCOUNT: set by the worker's start hook, not on import.
    assert "GOMP_SPINCOUNT" not in report["env_changed"]
    assert set(report["receivers"].values()) == {0}, report["receivers"]
    assert report["imgqueue_metrics"] == []
    assert "worker.broker:Transport" not in report["transports"]
    # The Celery wiring, the task and the ops modules load no torch; only model code does.
    assert report["torch_after_light"] is False
    assert report["has_app"] is False


def test_celery_a_worker_builds_the_app_from_the_environment() -> None:
    code = (
        "import worker; a = worker.app; print(a.main, a.settings.max_batch_size, a is worker.app)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAX_BATCH_SIZE": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["imgqueue", "3", "True"]


class _OtherWorker:
    """What Celery's worker_init sends: a WorkController, here one of another app."""

    app = object()
    pool_cls = "threads"


def test_apps_are_independent_and_their_hooks_act_for_their_own_worker_only() -> None:
    hooks = (signals.worker_init, signals.import_modules, signals.worker_process_init)
    saved = {s: list(s.receivers) for s in hooks}
    a = create_app(Settings(max_batch_size=2, model="sleep:1ms"))
    b = create_app(Settings(max_batch_size=5, model="sleep:1ms"))
    try:
        assert a is not b and a.conf.worker_concurrency != b.conf.worker_concurrency
        assert "classify" in a.tasks and "classify" in b.tasks
        # Another app's worker starting: neither of ours builds a context or loads anything.
        signals.worker_init.send(sender=_OtherWorker())
        assert a.context is None and b.context is None
        # Process hooks are connected only once a worker of this app starts.
        assert signals.worker_process_init.receivers == saved[signals.worker_process_init]
    finally:
        for app in (a, b):
            app.close()
        for signal, receivers in saved.items():
            signal.receivers[:] = receivers
            signal.sender_receivers_cache.clear()


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, "30000"), ({"GOMP_SPINCOUNT": "500"}, "500"), ({"OMP_WAIT_POLICY": "ACTIVE"}, None)],
)
def test_openmp_spinning_is_shortened_unless_the_operator_chose(
    given: dict[str, str], expected: str | None
) -> None:
    env = dict(given)
    configure_openmp(env)
    assert env.get("GOMP_SPINCOUNT") == expected


def test_the_worker_sets_openmp_before_its_task_modules_load_torch() -> None:
    # What `celery worker` does first: build the app, then import the task modules (the
    # `import_modules` signal comes right before).
    code = (
        "import os, sys, worker; app = worker.app; assert 'torch' not in sys.modules; "
        "app.loader.import_default_modules(); print(os.environ.get('GOMP_SPINCOUNT'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "30000"


def test_every_setting_declares_its_parser() -> None:
    for f in fields(Settings):
        assert callable(f.metadata.get("parse")), f.name
    raw = {
        "MAX_BATCH_SIZE": "4",
        "MAX_BATCH_DELAY_MS": "2.5",
        "DRAFT_DECODE": "off",
        "PRECISION": "FP32",
        "LOG_LEVEL": "info",
        "IMAGE_ROOT": str(ROOT),
        "ALLOWED_FORMATS": "jpeg, png",
        "FETCH_ALLOW_NETWORKS": "10.0.0.0/8",
        "RESULT_FAILURE_EXPIRES": "60",
    }
    s = Settings.from_env(raw)
    assert (s.max_batch_size, s.max_batch_delay_ms, s.draft_decode) == (4, 2.5, False)
    assert (s.precision, s.log_level, s.image_root) == ("fp32", "INFO", Path(ROOT))
    assert s.allowed_formats == ("JPEG", "PNG") and str(s.fetch_allow_networks[0]) == "10.0.0.0/8"
    assert s.result_failure_expires == 60
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_BATCH_SIZE", "four"), ("DRAFT_DECODE", "maybe"), ("FETCH_ALLOW_NETWORKS", "10.0.0.1/8")],
)
def test_a_malformed_setting_names_itself(name: str, value: str) -> None:
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match=f"^{name}="):
        Settings.from_env({name: value})
