"""`python -m bench.precision`: how far bf16, fp16 and int8 outputs are from fp32.

On the sample images, random weights (numerics only, labels mean nothing): the largest
probability difference, and top-1/top-5 agreement, raw and centred on the set's mean
(random weights rank the same classes first for every image; centring keeps the input's part).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from PIL import Image

from bench.images import SAMPLES
from bench.inprocess import load


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__)
    p.add_argument("--precisions", default="bf16,fp16,int8")
    args = p.parse_args()
    reference = load("fp32")
    images = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.jpg"))]
    batch = torch.stack([reference.preprocess(i) for i in images])
    base = reference.infer(batch)
    centre = base.log().mean(0)
    print("| precision | max abs dp | top-1 same | top-5 overlap | centred top-1 | centred top-5 |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = load(precision).infer(batch)
            except Exception as exc:  # e.g. fp16 autocast on a CPU build without kernels
                print(f"| {precision} | failed: {type(exc).__name__}: {exc} |")
                continue
        k = len(images)
        row = [f"{float((out - base).abs().max()):.2e}"]
        for a, b in ((base.log(), out.log()), (base.log() - centre, out.log() - centre)):
            ia, ib = a.topk(5).indices, b.topk(5).indices
            same = int((ia[:, 0] == ib[:, 0]).sum())
            overlap = sum(
                len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ia, ib, strict=True)
            )
            row += [f"{same}/{k}", f"{overlap / k:.2f}/5"]
        print(f"| {precision} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
