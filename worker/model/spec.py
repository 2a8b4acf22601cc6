"""The model a worker serves, resolved and checked before it takes a job.

`resolve_model` gathers MODEL, MODEL_WEIGHTS, MODEL_LABELS, MODEL_CARD, MODEL_NAME and
PREPROCESS into one ModelSpec, and refuses (ConfigError or WeightsUnavailable, naming the file
and what differs) anything that would fail later: an unknown architecture, a sha256 that does
not match the card, a head that does not match the labels, missing or unexpected keys, a
precision the architecture cannot run. It runs in the worker's main process before the fork
(files and the CPU only), and in `imgqueue model check`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ConfigError, WeightsUnavailable
from worker.model.arch import check_arch, check_state_dict, default_member, enum_member
from worker.model.card import Preprocessing, read_card, served_name
from worker.model.labels import labels_id, read_labels
from worker.model.weights import WeightsSource, read_state_dict, resolve

DEFAULT_ARCH = "resnet50"
DEFAULT_WEIGHTS = "IMAGENET1K_V2"
# int8 is torchvision's quantizable ResNet-50 (worker/model/quantized.py).
INT8_ARCHS = ("resnet50",)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides a model's answers, and the names results carry."""

    arch: str
    weights: WeightsSource
    labels: tuple[str, ...]
    labels_id: str
    preprocessing: Preprocessing
    preprocess_id: str  # a torchvision weights name, or `card:<hash>` for a card's own
    name: str = ""  # what producers route by; "" is the default model
    version: str | None = None

    @property
    def model(self) -> str:
        """What results call the model: its served name, else its architecture."""
        return self.name or self.arch


def enum_preprocessing(member: Any) -> Preprocessing:
    """The reference transforms of torchvision weights, as plain numbers."""
    t = member.transforms()
    mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    interpolation = str(t.interpolation.value)
    return Preprocessing(int(t.resize_size[0]), int(t.crop_size[0]), mean, std, interpolation)  # type: ignore[arg-type]


def resolve_model(
    *,
    arch: str = DEFAULT_ARCH,
    weights: str = DEFAULT_WEIGHTS,
    labels: Path | None = None,
    card: Path | None = None,
    name: str = "",
    preprocess: str = "",
    precision: str = "auto",
    download: bool = True,
) -> ModelSpec:
    """Resolve and check the configured model (the settings' names in the errors)."""
    version = None
    custom: Preprocessing | None = None
    if card is not None:
        found = read_card(card)
        _agree(found.path, "MODEL", arch, DEFAULT_ARCH, found.arch)
        if weights != DEFAULT_WEIGHTS and Path(weights).expanduser().resolve() != found.weights:
            _agree(found.path, "MODEL_WEIGHTS", weights, DEFAULT_WEIGHTS, str(found.weights))
        if labels is not None and labels.resolve() != found.labels:
            raise ConfigError(f"MODEL_CARD {found.path} names its labels; unset MODEL_LABELS")
        arch, weights, labels, version = found.arch, str(found.weights), found.labels, found.version
        custom = found.preprocess
        if not found.weights.is_file():
            raise WeightsUnavailable(f"MODEL_CARD {found.path}: {found.weights} does not exist")
    arch = check_arch(arch)
    source = resolve(weights, arch, download=download)
    if card is not None and found.weights_sha256 and source.sha256 != found.weights_sha256:
        raise ConfigError(
            f"MODEL_CARD {found.path}: {found.weights} has sha256 {source.sha256[:16]}..., the "
            f"card says {found.weights_sha256[:16]}... (a changed or corrupt weights file)"
        )
    if precision == "int8" and arch not in INT8_ARCHS:
        raise ConfigError(
            f"PRECISION=int8: int8 quantization here covers {', '.join(INT8_ARCHS)} only, not "
            f"{arch}; use fp32 or bf16 (or auto)"
        )
    # Whose reference transforms and categories apply, unless the card or the labels say.
    member = enum_member(arch, preprocess, "PREPROCESS") if preprocess else None
    if member is None:
        member = enum_member(arch, source.enum_name) if source.enum_name else default_member(arch)
    if labels is not None:
        label_list = read_labels(labels, "MODEL_LABELS" if card is None else "MODEL_CARD labels")
        # The labels file by its path, a card's too: it is the file to fix or replace.
        where_labels = f"MODEL_LABELS {labels}" if card is None else f"the labels file {labels}"
        of_card = "" if card is None else f" (of MODEL_CARD {found.path})"
        labels_from = f"{where_labels}{of_card} has {len(label_list)} labels"
    else:
        label_list = list(member.meta["categories"])
        labels_from = (
            f"MODEL_LABELS is unset, so the {len(label_list)} categories of {member.name} apply"
        )
    if source.path is not None:
        state, _ = read_state_dict(source.path)
        where = f"MODEL_WEIGHTS {source.path}" if card is None else f"the weights {source.path}"
        check_state_dict(arch, state, len(label_list), labels_from, where)
        del state
    preprocessing = custom or enum_preprocessing(member)
    preprocess_id = member.name if custom is None else f"card:{_digest(custom.to_dict())}"
    return ModelSpec(
        arch=arch,
        weights=source,
        labels=tuple(label_list),
        labels_id=labels_id(label_list),
        preprocessing=preprocessing,
        preprocess_id=preprocess_id,
        name=served_name(name, card),
        version=version or None,
    )


def from_settings(settings: Any, *, download: bool = True) -> ModelSpec:
    """`resolve_model` with a worker's Settings."""
    return resolve_model(
        arch=settings.model,
        weights=settings.model_weights,
        labels=settings.model_labels,
        card=settings.model_card,
        name=settings.model_name,
        preprocess=settings.preprocess,
        precision=settings.precision,
        download=download,
    )


def _agree(card: Path, setting: str, value: str, default: str, named: str) -> None:
    if value not in (default, named):
        raise ConfigError(f"MODEL_CARD {card} names {setting}={named!r}, but {setting}={value!r}")


def _digest(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
