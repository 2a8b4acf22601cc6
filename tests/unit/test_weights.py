"""Weights resolution: enum names, files, random seeds, labels and transforms from metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import save_random_weights
from tests.support.paths import SAMPLES
from worker.errors import WeightsUnavailable
from worker.imaging import decode
from worker.model.classifier import Classifier
from worker.model.spec import resolve_model
from worker.settings import DEFAULT_FORMATS


def _probabilities(classifier: Classifier, name: str) -> torch.Tensor:
    image = decode(
        (SAMPLES / name).read_bytes(), max_pixels=10**8, allowed_formats=DEFAULT_FORMATS
    ).image
    return classifier.infer(classifier.preprocess(image).unsqueeze(0))[0]


def test_weights_file_saved_from_random_gives_identical_results(tmp_path: Path) -> None:
    path = save_random_weights(tmp_path / "r3.pth", 3)
    from_seed = Classifier(resolve_model(weights="random:3"), "cpu")
    from_file = Classifier(resolve_model(weights=str(path)), "cpu")
    assert from_seed.weights_id == "random:3" and from_file.weights_id.startswith("file:")
    for name in ("cat.jpg", "rocket.jpg"):
        assert torch.equal(_probabilities(from_seed, name), _probabilities(from_file, name))


def test_random_weights_say_so() -> None:
    info = Classifier(resolve_model(weights="random:0"), "cpu").describe()
    assert info["weights"] == "random:0" and info["pretrained"] is False
    assert "meaningless" in info["warning"]


def test_enum_labels_and_transforms_come_from_the_weights_metadata() -> None:
    classifier = Classifier(resolve_model(weights="random:0", preprocess="IMAGENET1K_V1"), "cpu")
    assert (classifier.resize_size, classifier.input_size) == (256, 224)
    assert len(classifier.categories) == 1000 and classifier.categories[281] == "tabby"
    assert (Classifier(resolve_model(weights="random:0"), "cpu").resize_size) == 232


def test_missing_pretrained_weights_raise_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="MODEL_WEIGHTS"):
        resolve_model(weights="IMAGENET1K_V2", download=False)
    with pytest.raises(WeightsUnavailable, match="neither"):
        resolve_model(weights=str(tmp_path / "nope.pth"))
