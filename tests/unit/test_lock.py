"""requirements/lock.txt: every package the installs take, pinned within pyproject.toml's ranges,
and used by every install (scripts/bootstrap.sh, the Dockerfiles)."""

from __future__ import annotations

import re

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.paths import ROOT

LOCK = ROOT / "requirements" / "lock.txt"
# What bootstrap.sh, .ci/run and the Dockerfiles install: the base and these extras.
LOCKED_EXTRAS = ("worker", "gateway", "render", "objects", "parquet", "dev")


def pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            out[canonicalize_name(match.group(1))] = Version(match.group(2))
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        names += project["optional-dependencies"][extra]
    return [Requirement(name) for name in names]


def test_the_lock_pins_every_declared_package_within_its_range() -> None:
    locked = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is declared in pyproject.toml but not in the lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"the lock pins {name}=={locked[name]}, outside pyproject.toml's {requirement}: "
            "run bash scripts/lock.sh"
        )
    for extra in ("celery", "kombu", "redis", "torch", "torchvision"):
        assert extra in locked


def test_the_lock_names_no_machines_index() -> None:
    text = LOCK.read_text()
    assert "--find-links" not in text and "--index-url" not in text and "file://" not in text
    assert "bash scripts/lock.sh" in text  # how to refresh it, in its header


def test_every_install_takes_the_lock() -> None:
    assert '-c "$LOCK"' in (ROOT / "scripts" / "bootstrap.sh").read_text()
    for dockerfile in ("Dockerfile", "Dockerfile.producer"):
        text = (ROOT / dockerfile).read_text()
        assert "COPY requirements/lock.txt" in text
        assert re.search(r"pip install -c requirements/lock\.txt ", text), dockerfile
