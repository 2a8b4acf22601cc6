"""`python -m bench.backends_cpu`: ResNet-50 model only on this CPU, torch fp32 and bf16 against
ONNX Runtime fp32 (seeded random weights), the three interleaved, best of 5 per batch size.

Prints img/s and the ratio to torch fp32: on a CPU with bf16 in hardware this says whether
`PRECISION=auto BACKEND=auto` should land on torch bf16 or ONNX Runtime fp32 (the load-time
guard in worker/model/bf16.py decides on the host itself).
"""

from __future__ import annotations

import time

import torch

from bench import inprocess


def main() -> None:
    cands = {
        "torch fp32": inprocess.load("fp32", "cpu", "torch"),
        "torch bf16": inprocess.load("bf16", "cpu", "torch"),
        "onnxruntime fp32": inprocess.load("fp32", "cpu", "onnxruntime"),
    }
    for c in cands.values():
        c.warm_up(8)
    for bs in (1, 8):
        x = torch.randn(bs, 3, 224, 224)
        best = {k: 1e9 for k in cands}
        for _ in range(5):
            for k, c in cands.items():
                t = time.perf_counter()
                c.infer(x)
                best[k] = min(best[k], time.perf_counter() - t)
        base = best["torch fp32"]
        print(
            f"batch {bs}: "
            + ", ".join(f"{k} {bs / v:.1f} img/s ({base / v:.2f}x)" for k, v in best.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
