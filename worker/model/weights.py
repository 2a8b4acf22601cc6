"""Which weights to load, and from where.

`MODEL_WEIGHTS` is one of:
  * a torchvision weights enum name of the architecture (`IMAGENET1K_V2` for resnet50):
    loaded through torchvision's URL and the torch hub cache (`$TORCH_HOME/hub/checkpoints`);
  * a path to a saved state dict (air-gapped hosts, your own fine-tuned model): identified as
    `file:<sha256 prefix>`. It is read with `torch.load(weights_only=True)`: tensors and plain
    containers only, since unpickling arbitrary objects would run code from the file;
  * `random:SEED`: seeded random weights for tests and offline demos. Their labels mean nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ConfigError, WeightsUnavailable
from worker.model.arch import enum_member, enum_names

# Wrappers that prefix every key: DataParallel, torch.compile, Lightning modules (self.model).
KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights: where the tensors come from."""

    spec: str
    weights_id: str
    pretrained: bool | None  # None: a file, which may or may not hold trained weights
    arch: str = "resnet50"
    path: Path | None = None
    seed: int | None = None
    enum_name: str | None = None  # torchvision's weights: their transforms and categories apply
    sha256: str = ""  # of the file


def cache_path(name: str, arch: str = "resnet50") -> Path:
    import torch.hub

    url: str = enum_member(arch, name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(spec: str, arch: str = "resnet50", *, download: bool = True) -> WeightsSource:
    """Make sure the weights can be loaded (downloading pretrained ones into the cache).

    Runs in the worker's parent process, before any fork: it touches files, never CUDA.
    """
    if spec.startswith("random:"):
        seed_text = spec.split(":", 1)[1]
        if not seed_text.isdigit():
            raise ConfigError(f"MODEL_WEIGHTS={spec!r}: expected random:<non-negative integer>")
        seed = int(seed_text)
        return WeightsSource(spec, f"random:{seed}", False, arch, seed=seed)
    if spec.upper() in enum_names(arch):
        name = spec.upper()
        path = cache_path(name, arch)
        if not path.exists():
            if not download:
                raise WeightsUnavailable(_missing_message(name, path, "downloads are off"))
            _download(name, path, arch)
        return WeightsSource(spec, name, True, arch, path=path, enum_name=name)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"MODEL_WEIGHTS={spec!r} is neither a weights name of {arch} "
            f"({', '.join(enum_names(arch))}), random:SEED, nor an existing state-dict file"
        )
    digest = file_digest(path)
    return WeightsSource(spec, f"file:{digest[:12]}", None, arch, path=path, sha256=digest)


def _download(name: str, path: Path, arch: str) -> None:
    import torch.hub

    url = enum_member(arch, name).url
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


def read_state_dict(path: Path) -> tuple[dict[str, Any], str]:
    """A state dict from a file, and what the file held ("a state dict", "a Lightning-style
    checkpoint"); never unpickles anything but tensors and plain containers."""
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise WeightsUnavailable(
                f"{path} holds pickled Python objects, not only tensors; the worker does not "
                "unpickle them (that would run code from the file). Convert it with "
                "`imgqueue model pack` (docs/models.md)"
            ) from None
        raise WeightsUnavailable(f"cannot read weights file {path}: {exc}") from exc
    return state_dict_of(raw, str(path))


def state_dict_of(raw: Any, where: str) -> tuple[dict[str, Any], str]:
    """The tensors of a state dict or of a checkpoint that wraps one, keys unprefixed."""
    import torch

    kind = "a state dict"
    if isinstance(raw, torch.nn.Module):
        raw, kind = raw.state_dict(), "a whole pickled model"
    elif isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw, kind = raw["state_dict"], "a Lightning-style checkpoint (its state_dict)"
    elif isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        raw, kind = raw["model"], "a training checkpoint (its model)"
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsUnavailable(f"{where} does not hold a state dict")
    state = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if len(state) != len(raw):
        raise WeightsUnavailable(f"{where}: a state dict holds tensors only")
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state, kind


def load_state_dict(source: WeightsSource) -> dict[str, Any] | None:
    """The state dict to load, or None for seeded random initialisation."""
    if source.path is None:
        return None
    return read_state_dict(source.path)[0]
