"""The app in this process: `create_app(settings)` builds independent apps whose hooks act for
their own worker only; OpenMP's spinning is shortened unless the operator chose; every setting
declares its parser (tests/system/test_app.py: no import side effects, in fresh processes)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from celery import signals

from tests.support.paths import ROOT
from worker.celery_app import create_app
from worker.context import configure_openmp
from worker.settings import Settings


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
