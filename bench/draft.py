"""`python -m bench.draft`: what draft decoding costs in accuracy and saves in time.

For each size, decodes the same JPEGs fully and in draft mode, preprocesses both, and compares
the tensors and the model's top-5 (random weights unless --weights: numerics only).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.images import SAMPLES, make_set
from bench.inprocess import load
from worker.imaging import decode
from worker.settings import DEFAULT_FORMATS


def _tensor(model: object, data: bytes, draft: int | None) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    decoded = decode(data, max_pixels=64_000_000, allowed_formats=DEFAULT_FORMATS, draft_size=draft)
    tensor = model.preprocess(decoded.image)  # type: ignore[attr-defined]
    return tensor, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.draft", description=__doc__)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    model = load(args.precision)
    root = Path(tempfile.mkdtemp(prefix="imgqueue-draft-"))
    sets = {"samples": sorted(SAMPLES.glob("*.jpg"))}
    for size in ("1024x768", "4032x3024"):
        sets[size] = [root / n for n in make_set(root, size, args.images)]
    print("| images | full ms | draft ms | mean abs diff | top-1 same | top-5 overlap |")
    print("|---|---|---|---|---|---|")
    for name, paths in sets.items():
        full, draft, full_t, draft_t = [], [], [], []
        for path in paths:
            data = path.read_bytes()
            a, ta = _tensor(model, data, None)
            b, tb = _tensor(model, data, model.resize_size)
            full.append(a)
            draft.append(b)
            full_t.append(ta)
            draft_t.append(tb)
        diff = float((torch.stack(full) - torch.stack(draft)).abs().mean())
        # Random weights give every image the same top classes; centring the log-probabilities
        # on the set's mean keeps only what depends on the input, which is what draft changes.
        lp_full = model.infer(torch.stack(full)).log()
        lp_draft = model.infer(torch.stack(draft)).log()
        centre = lp_full.mean(0)
        ia, ib = (lp_full - centre).topk(5).indices, (lp_draft - centre).topk(5).indices
        k = len(paths)
        top1 = int((ia[:, 0] == ib[:, 0]).sum())
        overlap = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ia, ib, strict=True))
        print(
            f"| {name} ({k}) | {1e3 * sum(full_t) / k:.1f} | {1e3 * sum(draft_t) / k:.1f} | "
            f"{diff:.4f} | {top1}/{k} | {overlap / k:.2f}/5 |"
        )


if __name__ == "__main__":
    main()
