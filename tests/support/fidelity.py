"""The seed tutorial's way and the worker's way of classifying the same files, and how far
apart their probabilities are: the tests' parity checks and `python -m bench.fidelity`.

The reference is the seed tutorial's pipeline: Pillow decodes the whole file, `.convert("RGB")`,
the weights' own transforms, the network in eval mode, one image at a time. The worker's way is
what a worker runs: worker.imaging.decode (with or without draft), Classifier.preprocess,
Classifier.infer in batches of 8. `reference_probabilities`: the reference for a ResNet-50's
saved weights, as a worker's results are checked against it."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from worker.imaging import decode
from worker.model.arch import enum_member
from worker.model.classifier import Classifier, build_network
from worker.model.spec import ModelSpec
from worker.settings import DEFAULT_FORMATS


def reference(spec: ModelSpec, paths: list[Path]) -> torch.Tensor:
    """The seed tutorial's way, one image at a time."""
    model = build_network(spec)  # e.g. resnet50() with the seeded or saved weights
    model.eval()
    transforms = enum_member(spec.arch, spec.preprocess_id).transforms()
    rows = []
    with torch.inference_mode():
        for path in paths:
            with Image.open(path) as image:
                batch = transforms(image.convert("RGB")).unsqueeze(0)
            rows.append(model(batch).softmax(1)[0])
    return torch.stack(rows)


def worker_way(model: Classifier, paths: list[Path], draft: bool) -> torch.Tensor:
    tensors = []
    for path in paths:
        decoded = decode(
            path.read_bytes(),
            max_pixels=64_000_000,
            allowed_formats=DEFAULT_FORMATS,
            draft_size=model.resize_size if draft else None,
        )
        tensors.append(model.preprocess(decoded.image))
    return torch.cat(
        [model.infer(torch.stack(tensors[i : i + 8])) for i in range(0, len(paths), 8)]
    )


def compare(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    top5 = ref.topk(5).indices
    dp = (ref.gather(1, top5) - got.float().gather(1, top5)).abs()
    mine = got.float().topk(5).indices
    n = len(ref)
    return {
        "max_dp": float(dp.max()),
        "mean_dp": float(dp.mean()),
        "top1": sum(int(a[0] == b[0]) for a, b in zip(top5, mine, strict=True)) / n,
        "top5_order": sum(int(torch.equal(a, b)) for a, b in zip(top5, mine, strict=True)) / n,
        "top5_set": sum(
            int(set(a.tolist()) == set(b.tolist())) for a, b in zip(top5, mine, strict=True)
        )
        / n,
    }


def reference_probabilities(weights_file: Path, image: Path) -> list[float]:
    """The seed tutorial's way: the weights' transforms, the model, softmax — no service code."""
    import torch
    from PIL import Image
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50()
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    model.eval()
    preprocess = ResNet50_Weights.IMAGENET1K_V2.transforms()
    batch = preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return [float(p) for p in torch.softmax(model(batch), dim=1)[0]]
