"""`python -m bench.fidelity`: how far the worker's output is from the seed tutorial's, per setting.

The reference is the seed tutorial's pipeline: Pillow decodes the whole file, `.convert("RGB")`,
the weights' own transforms (`ResNet50_Weights.transforms()`), a plain fp32 `resnet50` in eval
mode. Each configuration runs what the worker runs (worker.imaging.decode with or without draft,
Classifier.preprocess, Classifier.infer in that precision, on torch or ONNX Runtime) on the same
files with the same weights, and is compared on the probabilities of the reference's top-5
classes and on the top-5 itself. Random weights unless --weights: numerics, not accuracy on
labelled data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image

from bench.images import SAMPLES, make_set
from worker.imaging import decode
from worker.model.arch import enum_member
from worker.model.classifier import Classifier, build_network
from worker.model.spec import INT8_ARCHS, ModelSpec, resolve_model
from worker.settings import DEFAULT_FORMATS

# (label, PRECISION, DRAFT_DECODE, BACKEND); bf16 and int8 run on torch whatever BACKEND says
CONFIGS = (
    ("PRECISION=fp32 DRAFT_DECODE=false BACKEND=torch", "fp32", False, "torch"),
    ("PRECISION=fp32 DRAFT_DECODE=false BACKEND=onnxruntime", "fp32", False, "onnxruntime"),
    ("PRECISION=fp32 (draft on) BACKEND=torch", "fp32", True, "torch"),
    ("PRECISION=fp32 (draft on) BACKEND=onnxruntime", "fp32", True, "onnxruntime"),
    ("PRECISION=bf16 DRAFT_DECODE=false", "bf16", False, "torch"),
    ("PRECISION=bf16 (draft on)", "bf16", True, "torch"),
    ("PRECISION=int8 DRAFT_DECODE=false", "int8", False, "torch"),
)


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


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__)
    p.add_argument("--arch", default="resnet50", help="MODEL (default resnet50)")
    p.add_argument("--weights", default="random:0", help="MODEL_WEIGHTS (default random:0)")
    p.add_argument("--images", type=int, default=8, help="per generated size")
    args = p.parse_args()
    spec = resolve_model(arch=args.arch, weights=args.weights)
    root = Path(tempfile.mkdtemp(prefix="imgqueue-fidelity-"))
    paths = sorted(SAMPLES.glob("*.jpg"))
    for size in ("1024x768", "4032x3024"):
        paths += [root / n for n in make_set(root, size, args.images)]
    ref = reference(spec, paths)
    print(
        f"{spec.arch}, weights {spec.weights.weights_id}, {len(paths)} JPEGs "
        "(samples, 1024x768, 4032x3024)"
    )
    print("| settings | max abs dp (ref top-5) | mean abs dp | top-1 same | top-5 same order |"
          " top-5 same set |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    models: dict[tuple[str, str], Classifier] = {}
    for label, precision, draft, backend in CONFIGS:
        if precision == "int8" and spec.arch not in INT8_ARCHS:
            continue
        if (precision, backend) not in models:
            models[precision, backend] = Classifier(spec, "cpu", precision, backend=backend)
        model = models[precision, backend]
        if model.backend != backend:  # ONNX Runtime fell back to torch (logged): say so
            label += f" (ran on {model.backend})"
        got = worker_way(model, paths, draft)
        c = compare(ref, got)
        print(
            f"| {label} | {c['max_dp']:.1e} | {c['mean_dp']:.1e} | {c['top1']:.0%} | "
            f"{c['top5_order']:.0%} | {c['top5_set']:.0%} |"
        )


if __name__ == "__main__":
    main()
