"""docker-compose.yml and the Dockerfiles, checked without a Docker engine, by other programs:
the compose file against the Compose Specification schema (check-jsonschema, which vendors it,
so this works offline), the producer Dockerfile's install line run by `sh` with pip stubbed,
and the package built by pip without a warning of ours.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.dockerfiles import instructions
from tests.support.paths import ROOT


def test_compose_file_matches_the_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(
        Path(sys.executable).with_name("check-jsonschema")
    )
    out = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("extras,expected", [("", None), ("gateway", ".[gateway]")])
def test_producer_dockerfile_installs_the_extras_asked_for(
    extras: str, expected: str | None, tmp_path: Path
) -> None:
    """`--build-arg EXTRAS=gateway` adds the gateway extra on top of the base install; none
    by default. The RUN line is run by sh with `pip` standing in as a script that records."""
    steps = instructions("Dockerfile.producer")
    assert ("ARG", 'EXTRAS=""') in steps
    run = next(rest for word, rest in steps if word == "RUN" and "$EXTRAS" in rest)
    (tmp_path / "pip").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\n')
    (tmp_path / "pip").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "EXTRAS": extras}
    done = subprocess.run(["sh", "-c", run], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    recorded = tmp_path / "pip.args"
    if expected is None:
        assert not recorded.exists()
    else:
        args = recorded.read_text().split("\n")[:-1]
        assert args == ["install", "-c", "requirements/lock.txt", expected]


def test_the_package_builds_without_a_warning_of_ours(tmp_path: Path) -> None:
    """pyproject.toml: an SPDX `license` string, nothing setuptools deprecates."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "Deprecat" not in text and "project.license" not in text, text[-2000:]
    (wheel,) = tmp_path.glob("imgqueue-*.whl")
    # The gateway's page is package data (services/gateway/routes/page.py serves it from there).
    assert "services/gateway/page/index.html" in zipfile.ZipFile(wheel).namelist()
