"""The producer install never needs torch or the worker: its base dependencies have none
(tests/system/test_producer_light.py: what importing the producer loads, in a fresh process)."""

from __future__ import annotations

from tests.support.paths import ROOT


def test_base_dependencies_have_no_torch() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "torch" in d]
    worker_extra = project["optional-dependencies"]["worker"]
    assert "torch==2.14.1" in worker_extra and "torchvision==0.29.1" in worker_extra
