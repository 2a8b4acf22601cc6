"""Your own models' files, as training would leave them: checkpoints of seeded random weights
with real heads (3 and 4 classes) and their labels files, without downloading a model; and
tiny's packed card, made under a strict umask.

The module-scoped fixture `made` (a directory of them) is defined here under that name; a test
module imports `made_fixture` (never called directly) to use it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from worker.model.arch import head_keys
from worker.model.pack import pack

DEFECTS = ["ok", "scratch", "dent"]
TINY = ["circle", "square", "triangle", "star"]


def checkpoint(path: Path, arch: str, classes: int, seed: int = 0) -> Path:
    """Seeded random weights whose head is scaled up: random heads are so small that every
    image gets nearly uniform probabilities, and parity with those would prove nothing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    state = model.state_dict()
    for key in head_keys(arch):
        state[key] = state[key] * 100
    torch.save(state, path)
    return path


def labels_file(path: Path, labels: list[str]) -> Path:
    path.write_text("\n".join(labels) + "\n")
    return path


@pytest.fixture(name="made", scope="module")
def made_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ResNet-50 and a 4-class SqueezeNet, with labels, as training would leave them."""
    d = tmp_path_factory.mktemp("checkpoints")
    checkpoint(d / "defects.pt", "resnet50", 3)
    labels_file(d / "defects.txt", DEFECTS)
    for version, seed in (("1", 1), ("2", 2)):
        checkpoint(d / f"tiny-v{version}.pt", "squeezenet1_1", 4, seed)
    labels_file(d / "tiny.txt", TINY)
    return d


def pack_under_umask_077(made: Path, out: Path) -> None:
    """`imgqueue model pack` of tiny v1, under the strictest umask an operator might have."""
    old = os.umask(0o077)
    try:
        pack(made / "tiny-v1.pt", arch="squeezenet1_1", labels=made / "tiny.txt", out=out,
             name="tiny")  # fmt: skip
    finally:
        os.umask(old)
