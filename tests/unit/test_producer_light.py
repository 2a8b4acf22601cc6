"""The producer install never needs torch or the worker."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def test_import_producer_leaves_torch_and_worker_out() -> None:
    code = (
        "import sys, producer, cli.main\n"
        "heavy = ('torch', 'torchvision', 'worker', 'PIL')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_base_dependencies_have_no_torch() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "torch" in d]
    worker_extra = project["optional-dependencies"]["worker"]
    assert "torch==2.14.1" in worker_extra and "torchvision==0.29.1" in worker_extra


def test_unreachable_redis_is_a_clear_error() -> None:
    from producer import BrokerUnavailable, Client
    from tests.support.ports import free_port

    with Client(f"redis://:hunter2@127.0.0.1:{free_port()}/0") as client:
        try:
            client.submit("cat.jpg")
        except BrokerUnavailable as exc:
            assert "cannot reach Redis" in str(exc)
            assert "hunter2" not in str(exc)
        else:
            raise AssertionError("submit to a closed port must fail")
