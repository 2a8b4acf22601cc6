"""A model's label set: read from a file, identified by a hash (plain data: no torch).

A labels file is one label per line (blank lines at the end ignored), a JSON list, or a JSON
object mapping each index ("0", "1", ...) to its name, as TorchServe's index_to_name.json
does (a `[id, name]` pair as the value takes the name).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from worker.errors import ConfigError


def labels_id(labels: list[str]) -> str:
    """`sha256:` and 12 hex digits over the labels in order: what results and the cache key
    carry, so a relabelled model never shares results with the old labels."""
    digest = hashlib.sha256(json.dumps(labels, ensure_ascii=False).encode()).hexdigest()
    return f"sha256:{digest[:12]}"


def read_labels(path: Path, setting: str = "MODEL_LABELS") -> list[str]:
    where = f"{setting} {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: looks like JSON but does not parse ({exc})") from None
        labels = _from_json(raw, where)
    else:
        labels = [line.strip() for line in text.rstrip("\n").split("\n")]
        labels = [label.rstrip("\r") for label in labels]
        if "" in labels:
            raise ConfigError(f"{where}: line {labels.index('') + 1} is empty")
    if not labels:
        raise ConfigError(f"{where}: no labels")
    return labels


def _from_json(raw: Any, where: str) -> list[str]:
    if isinstance(raw, list):
        if not all(isinstance(v, str) and v for v in raw):
            raise ConfigError(f"{where}: a JSON list of labels must hold non-empty strings")
        return list(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON list or an object of index -> name")
    named: dict[int, str] = {}
    for key, value in raw.items():
        if not str(key).isdigit():
            raise ConfigError(f"{where}: key {key!r} is not an index")
        if isinstance(value, list) and len(value) == 2:  # ["n01440764", "tench"]
            value = value[1]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: the name of index {key} must be a non-empty string")
        named[int(key)] = value
    missing = sorted(set(range(len(named))) - set(named))
    if missing:
        raise ConfigError(
            f"{where}: indices must run 0..{len(named) - 1} without gaps; missing {missing[:5]}"
        )
    return [named[i] for i in range(len(named))]
