"""`imgqueue model pack` and `imgqueue model check`: a checkpoint made into a model a worker
serves (a card, a plain state dict, the labels), and the worker's start-up checks run alone.

Packing reads what training wrote: a state dict, a Lightning-style checkpoint (its
`state_dict`), or a whole pickled model. Only the last needs unpickling arbitrary objects,
which runs code from the file, so it takes `trust_pickle`; what pack writes is tensors only,
which a worker reads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.models import queue_for
from worker.errors import ConfigError, WeightsUnavailable
from worker.model.arch import check_arch, check_state_dict
from worker.model.card import ModelCard, Preprocessing, card_path
from worker.model.labels import read_labels
from worker.model.spec import ModelSpec, resolve_model
from worker.model.weights import file_digest, state_dict_of

WEIGHTS_FILE = "weights.pt"
LABELS_FILE = "labels.json"
CARD_FILE = "model.json"
# A worker often reads the model as another user (the image's uid 10001, from a read-only
# mount): what pack writes is readable by all, whatever the umask.
FILE_MODE, DIR_MODE = 0o644, 0o755


@dataclass(frozen=True)
class Packed:
    card: Path
    found: str  # what the checkpoint held
    spec: ModelSpec


def read_checkpoint(path: Path, trust_pickle: bool = False) -> tuple[dict[str, Any], str]:
    """The state dict in a training checkpoint, and what kind of file it was."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsUnavailable(f"{path} does not exist") from None
    except Exception:
        if not trust_pickle:
            raise WeightsUnavailable(
                f"{path} holds pickled Python objects besides tensors (a whole model, or a "
                "checkpoint with training state): unpickling them runs code from the file. If "
                "you made it, pass --trust-pickle"
            ) from None
        raw = torch.load(path, map_location="cpu", weights_only=False)
    return state_dict_of(raw, str(path))


def pack(
    checkpoint: Path,
    *,
    arch: str,
    labels: Path,
    out: Path,
    name: str,
    version: str = "1",
    preprocess: Preprocessing | None = None,
    trust_pickle: bool = False,
) -> Packed:
    """Write `out/model.json`, `out/weights.pt` and `out/labels.json`, then check them as a
    worker would at start."""
    arch = check_arch(arch, "--arch")
    label_list = read_labels(labels, "--labels")
    state, found = read_checkpoint(checkpoint, trust_pickle)
    labelled = f"--labels {labels} has {len(label_list)} labels"
    check_state_dict(arch, state, len(label_list), labelled, f"{checkpoint}")
    _make_dirs(out)
    # contiguous copies: a view into a larger storage would save that whole storage
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
    _atomic(out / WEIGHTS_FILE, lambda f: torch.save(tensors, f))
    _atomic(out / LABELS_FILE, lambda f: f.write(json.dumps(label_list, indent=1).encode()))
    card = ModelCard(
        path=out.resolve() / CARD_FILE,
        name=name,
        version=version,
        arch=arch,
        weights=out.resolve() / WEIGHTS_FILE,
        weights_sha256=file_digest(out / WEIGHTS_FILE),
        labels=out.resolve() / LABELS_FILE,
        preprocess=preprocess,
    )
    text = json.dumps(card.to_json(), indent=2) + "\n"
    _atomic(out / CARD_FILE, lambda f: f.write(text.encode()))
    return Packed(card.path, found, check(card.path))


def check(path: Path, precision: str = "fp32") -> ModelSpec:
    """The worker's start-up checks on a card (or a packed directory), without Redis: resolve
    and check it, then build it on the CPU and run one image through it."""
    from worker.model.classifier import Classifier

    spec = resolve_model(card=card_path(path), precision=precision, download=False)
    model = Classifier(spec, "cpu", "fp32" if precision == "auto" else precision)
    size = spec.preprocessing.crop
    out = model.infer(torch.zeros(1, 3, size, size))
    if tuple(out.shape) != (1, len(spec.labels)):
        raise ConfigError(f"{path}: the model gives {tuple(out.shape)}, not 1x{len(spec.labels)}")
    return spec


def describe(spec: ModelSpec) -> dict[str, Any]:
    """What `imgqueue model check` prints."""
    return {
        "name": spec.name,
        "version": spec.version,
        "arch": spec.arch,
        "weights": spec.weights.weights_id,
        "labels": spec.labels_id,
        "classes": len(spec.labels),
        "first_labels": list(spec.labels[:5]),
        "preprocess": spec.preprocessing.to_dict(),
        "queue": queue_for(spec.name),
    }


def _make_dirs(path: Path) -> None:
    """`path` and its missing parents, each DIR_MODE; an existing directory keeps its mode."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, DIR_MODE)


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
