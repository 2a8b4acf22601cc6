"""docs/settings.md is generated from the settings' declarations (scripts/settings_doc.py):
these fail when the page is stale or a declared setting says nothing about itself."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts/settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("settings_doc", module)
    spec.loader.exec_module(module)
    return module


def test_settings_doc_is_current() -> None:
    script = _script()
    assert (ROOT / "docs/settings.md").read_text() == script.render(), (
        "docs/settings.md is stale: run python scripts/settings_doc.py --write"
    )


def test_every_declared_setting_is_documented() -> None:
    script = _script()
    classes = list(script.settings_classes())
    assert any(cls.__name__ == "Settings" for cls in classes)
    undocumented = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if "parse" in f.metadata and not f.metadata.get("doc")
    ]
    assert not undocumented, f"declare a description (env(..., doc)) for {undocumented}"


def test_check_flags_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script()
    stale = tmp_path / "settings.md"
    stale.write_text("# Settings\n")
    monkeypatch.setattr(script, "DOC", stale)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    assert script.main(["--check"]) == 1
    assert script.main(["--write"]) == 0
    assert script.main(["--check"]) == 0
