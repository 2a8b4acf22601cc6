"""`python -m bench.onnx_archs`: which torchvision classification architectures run on ONNX Runtime.

Each architecture is built with seeded random weights (`random:0`; a zero-initialised head gets
small random weights, see `_wake_zero_heads`), exported and checked the way a worker loads it
(worker/model/onnx.py: `load_session`, the probe of two sample photos), in a temporary cache
that is emptied after each. Prints one line per architecture: the seconds to export and check,
the largest probability and relative logit differences, or why it stays on torch.
Architectures over --max-params million parameters are listed as not tried.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch

from worker.model import onnx
from worker.model.arch import architectures, build
from worker.model.classifier import build_network, transforms_of
from worker.model.spec import resolve_model


def _wake_zero_heads(model: torch.nn.Module) -> None:
    """Give a zero-initialised layer (torchvision's ViT heads start at zero) small seeded
    random weights: with all-zero logits any graph would "match", and the check would prove
    nothing."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, 0.02, generator=generator)


def _millions_of_parameters(arch: str) -> float:
    try:
        model = build(arch, 1000, "meta")
    except NotImplementedError:  # RegNets copy tensors while they are built
        model = build(arch, 1000, "cpu")
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.onnx_archs", description=__doc__)
    p.add_argument("--max-params", type=float, default=400, help="millions; larger are skipped")
    p.add_argument("--only", default="", help="comma-separated architectures (default: all)")
    args = p.parse_args()
    wanted = [a for a in args.only.split(",") if a] or list(architectures())
    cache = Path(tempfile.mkdtemp(prefix="imgqueue-onnx-archs-"))
    refused: list[str] = []
    print(
        "| architecture | parameters (M) | input | export + check, s | max abs dp "
        "| max logit difference / max logit | runs on |"
    )
    print("|---|---|---|---|---|---|---|")
    try:
        for arch in wanted:
            params = _millions_of_parameters(arch)
            if params > args.max_params:
                print(
                    f"| {arch} | {params:.0f} | - | - | - | not tried (> {args.max_params:g} M) |"
                )
                continue
            spec = resolve_model(arch=arch, weights="random:0")
            model = build_network(spec).eval()
            _wake_zero_heads(model)
            crop = spec.preprocessing.crop
            probe = onnx.probe_batch(transforms_of(spec.preprocessing), crop)
            started = time.perf_counter()
            try:
                session, _ = onnx.load_session(
                    spec, model, probe, onnx.OnnxOptions(cache_dir=cache)
                )
                worst = onnx.probe_difference(session, model, probe)
                outcome, dp = "onnxruntime", f"{worst.probability:.1e} | {worst.logits:.1e}"
            except onnx.OnnxUnavailable as exc:
                refused.append(arch)
                outcome, dp = f"torch: {exc}", "- | -"
            seconds = time.perf_counter() - started
            size = int(probe.shape[-1])
            print(
                f"| {arch} | {params:.1f} | {size} | {seconds:.1f} | {dp} | {outcome} |", flush=True
            )
            shutil.rmtree(cache, ignore_errors=True)
            del model, probe
            gc.collect()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    ran = len(wanted) - len(refused)
    print(f"\n{ran} of {len(wanted)} listed; stay on torch: {refused or 'none'}")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
