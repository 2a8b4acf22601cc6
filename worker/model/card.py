"""A model card: one JSON file naming a model's architecture, weights, labels and version.

    {"name": "defects", "version": "3", "arch": "resnet50",
     "weights": "weights.pt", "weights_sha256": "9f2c...",
     "labels": "labels.txt",
     "preprocess": {"resize": 232, "crop": 224, "interpolation": "bilinear",
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}

Paths are relative to the card's directory. `preprocess` is optional (absent: the
architecture's torchvision reference transforms). Reading a card needs no torch, so the
worker's Celery set-up and the producer's CLI can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.models import BadModelName, check_name
from worker.errors import ConfigError

CARD_FORMAT = "imgqueue-model/1"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """torchvision's ImageClassification transform: resize the shorter side, centre-crop,
    scale to [0, 1], normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Preprocessing:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: preprocess must be an object")
        unknown = set(raw) - {"resize", "crop", "mean", "std", "interpolation"}
        if unknown:
            raise ConfigError(f"{where}: preprocess has unknown keys {sorted(unknown)}")
        try:
            resize, crop = int(raw["resize"]), int(raw["crop"])
            mean = tuple(float(v) for v in raw.get("mean", (0.485, 0.456, 0.406)))
            std = tuple(float(v) for v in raw.get("std", (0.229, 0.224, 0.225)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{where}: preprocess needs integer resize and crop, and three-number mean and "
                f"std ({exc!r})"
            ) from None
        interpolation = str(raw.get("interpolation", "bilinear")).lower()
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ConfigError(f"{where}: mean and std need three numbers each, std positive")
        if not (16 <= crop <= resize <= 4096):
            raise ConfigError(f"{where}: preprocess needs 16 <= crop <= resize <= 4096")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"{where}: interpolation must be one of {INTERPOLATIONS}")
        return cls(resize, crop, mean, std, interpolation)


@dataclass(frozen=True)
class ModelCard:
    path: Path
    name: str
    version: str
    arch: str
    weights: Path
    weights_sha256: str
    labels: Path
    preprocess: Preprocessing | None = None

    def to_json(self) -> dict[str, Any]:
        """The card as written next to its files (paths relative to the card)."""
        raw: dict[str, Any] = {
            "format": CARD_FORMAT,
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "weights": _relative(self.weights, self.path.parent),
            "weights_sha256": self.weights_sha256,
            "labels": _relative(self.labels, self.path.parent),
        }
        if self.preprocess is not None:
            raw["preprocess"] = self.preprocess.to_dict()
        return raw

    def write(self) -> None:
        self.path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def card_path(path: Path) -> Path:
    """A card file, or a directory holding `model.json` (what `imgqueue model pack` writes)."""
    return path / "model.json" if path.is_dir() else path


def read_card(path: Path) -> ModelCard:
    """Read and check a card's own fields; raises ConfigError naming the file."""
    path = card_path(path)
    where = f"MODEL_CARD {path}"
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    if raw.get("format", CARD_FORMAT) != CARD_FORMAT:
        raise ConfigError(f"{where}: format {raw.get('format')!r}, expected {CARD_FORMAT!r}")
    missing = [k for k in ("name", "arch", "weights", "labels") if not raw.get(k)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    known = {"format", "name", "version", "arch", "weights", "weights_sha256", "labels"}
    unknown = set(raw) - known - {"preprocess", "description"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        name = check_name(str(raw["name"]))
    except BadModelName as exc:
        raise ConfigError(f"{where}: {exc}") from None
    sha = str(raw.get("weights_sha256", "")).lower()
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ConfigError(f"{where}: weights_sha256 must be 64 hex digits")
    base = path.parent
    preprocess = raw.get("preprocess")
    return ModelCard(
        path=path,
        name=name,
        version=str(raw.get("version", "")),
        arch=str(raw["arch"]).lower(),
        weights=(base / str(raw["weights"])).resolve(),
        weights_sha256=sha,
        labels=(base / str(raw["labels"])).resolve(),
        preprocess=None if preprocess is None else Preprocessing.from_dict(preprocess, where),
    )


def served_name(model_name: str, card: Path | None) -> str:
    """The name producers route by: MODEL_NAME, else the card's name, else "" (the default
    model, on the default queue)."""
    if model_name:
        try:
            return check_name(model_name)
        except BadModelName as exc:
            raise ConfigError(f"MODEL_NAME: {exc}") from None
    if card is not None:
        return read_card(card).name
    return ""
