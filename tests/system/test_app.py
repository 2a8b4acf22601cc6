"""The app without import side effects, each in a fresh Python process: importing any module
under `worker` reads no environment, connects no signal, registers no metric and loads no
torch; `worker.app` is built from the environment; the worker sets OpenMP's spinning before
its task modules load torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.paths import ROOT

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
