"""Which ResNet-50 weights to load, and from where.

`MODEL_WEIGHTS` is one of:
  * a torchvision weights enum name (`IMAGENET1K_V2`, `IMAGENET1K_V1`): loaded through
    torchvision's URL and the torch hub cache (`$TORCH_HOME/hub/checkpoints`);
  * a path to a saved state dict (air-gapped hosts): identified as `file:<sha256 prefix>`;
  * `random:SEED`: seeded random weights for tests and offline demos. Their labels mean nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ConfigError, WeightsUnavailable

ENUM_NAMES = ("IMAGENET1K_V1", "IMAGENET1K_V2")


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights: where the tensors come from and how inputs must be preprocessed."""

    spec: str
    weights_id: str
    pretrained: bool | None  # None: a file, which may or may not hold trained weights
    preprocess: str  # the enum whose reference transforms and categories apply
    path: Path | None = None
    seed: int | None = None


def enum_member(name: str) -> Any:
    from torchvision.models import ResNet50_Weights

    try:
        return ResNet50_Weights[name]
    except KeyError:
        raise ConfigError(f"unknown ResNet-50 weights {name!r}; use one of {ENUM_NAMES}") from None


def cache_path(name: str) -> Path:
    import torch.hub

    url: str = enum_member(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(
    spec: str, preprocess: str = "IMAGENET1K_V2", *, download: bool = True
) -> WeightsSource:
    """Make sure the weights can be loaded (downloading pretrained ones into the cache).

    Runs in the worker's parent process, before any fork: it touches files, never CUDA.
    """
    enum_member(preprocess)
    if spec.startswith("random:"):
        seed_text = spec.split(":", 1)[1]
        if not seed_text.isdigit():
            raise ConfigError(f"MODEL_WEIGHTS={spec!r}: expected random:<non-negative integer>")
        return WeightsSource(
            spec, f"random:{int(seed_text)}", False, preprocess, seed=int(seed_text)
        )
    if spec.upper() in ENUM_NAMES:
        name = spec.upper()
        path = cache_path(name)
        if not path.exists():
            if not download:
                raise WeightsUnavailable(_missing_message(name, path, "downloads are off"))
            _download(name, path)
        return WeightsSource(spec, name, True, name, path=path)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"MODEL_WEIGHTS={spec!r} is neither {', '.join(ENUM_NAMES)}, random:SEED, "
            "nor an existing state-dict file"
        )
    return WeightsSource(spec, f"file:{file_digest(path)[:12]}", None, preprocess, path=path)


def _download(name: str, path: Path) -> None:
    import torch.hub

    url = enum_member(name).url
    path.parent.mkdir(parents=True, exist_ok=True)
    # torchvision's file names carry the first hex digits of the sha256: verify them.
    hash_prefix = path.stem.rsplit("-", 1)[-1]
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=False)
    except Exception as exc:
        raise WeightsUnavailable(_missing_message(name, path, f"download failed: {exc}")) from exc


def _missing_message(name: str, path: Path, why: str) -> str:
    return (
        f"cannot load pretrained weights {name} ({why}). Either give this host internet access, "
        f"copy {os.path.basename(path)} into {path.parent}, or set MODEL_WEIGHTS to a local "
        "state-dict file (or random:0 for a demo with meaningless labels)."
    )


def load_state_dict(source: WeightsSource) -> dict[str, Any] | None:
    """The state dict to load, or None for seeded random initialisation."""
    import torch

    if source.path is None:
        return None
    try:
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot read weights file {source.path}: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{source.path} does not hold a state dict")
    return state
