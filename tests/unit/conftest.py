"""The unit tier: the pytest process alone (tests/support/isolation.py holds every test here
to it)."""

from __future__ import annotations

import pytest

from tests.support.isolation import confine


@pytest.fixture(autouse=True)
def _pytest_process_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    confine(monkeypatch, "tests/unit", programs=frozenset(), network=False)
