"""`python -m bench.fidelity`: how far the worker's output is from the seed tutorial's, per setting.

The reference is the seed tutorial's pipeline: Pillow decodes the whole file, `.convert("RGB")`,
the weights' own transforms (`ResNet50_Weights.transforms()`), a plain fp32 `resnet50` in eval
mode. Each configuration runs what the worker runs (worker.imaging.decode with or without draft,
Classifier.preprocess, Classifier.infer in that precision, on torch or ONNX Runtime) on the same
files with the same weights, and is compared on the probabilities of the reference's top-5
classes and on the top-5 itself. Random weights unless --weights: numerics, not accuracy on
labelled data. Both ways and the comparison are tests/support/fidelity.py's, which the
tests' parity checks share.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.images import SAMPLES, make_set
from tests.support.fidelity import compare, reference, worker_way
from worker.model.classifier import Classifier
from worker.model.spec import INT8_ARCHS, resolve_model

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
