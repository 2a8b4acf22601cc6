"""bf16 on CPUs: which CPUs have it natively, the model form that runs fastest, and a guard.

Measured on a 2-core AMD EPYC (Zen 4, AVX512-BF16, no AMX), ResNet-50 batch 8, channels_last:
fp32 411 ms, bf16 autocast 215 ms, bf16 weights with batch norm folded into the convolutions
202 ms (docs/performance.md). An earlier dev host with the same flag measured bf16 1.3x *slower*
than fp32, so `PRECISION=auto` times both once at load instead of trusting the flag alone.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

log = logging.getLogger(__name__)

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 must beat fp32 by this much to be chosen: it costs some precision (docs/performance.md).
MIN_SPEEDUP = 1.1


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in NATIVE_FLAGS)


def to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy in bf16, channels_last, batch norm folded into the convolutions (eval mode only).

    Folding removes one bf16 round trip per convolution; it beat autocast by 5-15% here."""
    from torch.fx.experimental.optimization import fuse

    fused = fuse(copy.deepcopy(model).eval())
    return fused.to(memory_format=torch.channels_last).to(torch.bfloat16)


def bf16_pays(fp32: torch.nn.Module, bf16: torch.nn.Module, input_size: int = 224) -> bool:
    """Times one small batch in each precision; True where bf16 is clearly faster.

    The runs alternate and the best of each counts, so a burst of load from another process
    (several workers starting at once) hits both alike."""
    x = torch.randn(2, 3, input_size, input_size).contiguous(memory_format=torch.channels_last)
    runs = ((fp32, x), (bf16, x.to(torch.bfloat16)))
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for model, batch in runs:
            model(batch)  # warm-up: oneDNN builds its kernels on the first call
        for _ in range(3):
            for i, (model, batch) in enumerate(runs):
                started = time.perf_counter()
                model(batch)
                best[i] = min(best[i], (time.perf_counter() - started) * 1e3)
    fp32_ms, bf16_ms = best
    pays = fp32_ms >= MIN_SPEEDUP * bf16_ms
    log.info(
        "PRECISION=auto: batch of 2 took %.0f ms in fp32, %.0f ms in bf16; using %s",
        fp32_ms,
        bf16_ms,
        "bf16" if pays else "fp32",
    )
    return pays
