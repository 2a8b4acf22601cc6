#!/usr/bin/env bash
# The GPU check, run ON a lent device machine (one command, ~8 min): carried wheels installed,
# the carried redis-server on PATH, then the benchmark on CUDA with 1 and 4 worker processes.
# Here: bash scripts/device-kit.sh; then the device tool's run with carry [".device-kit"] and
#   command "bash scripts/device-check.sh", timeout_s 540. Results land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device-kit/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PATH="$PWD/.device-kit/bin:$PATH" PYTHONUNBUFFERED=1
export MODEL_WEIGHTS=random:0
{
    nvidia-smi --query-gpu=name,memory.total --format=csv
    $PY -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())'
    redis-server --version
    # GPU path tests that need no Redis: the classifier on cuda, fp16, nvJPEG decode.
    $PY -m pytest -q -p no:cacheprovider tests/unit/test_gpu.py 2>&1 | tail -15
    # Model only, fp16, batch 64 and 256 (no decoding, no queue).
    $PY -c 'import time, torch; from worker.model.classifier import Classifier; from worker.model.weights import resolve
m = Classifier(resolve("random:0"), "cuda", "fp16")
for b in (64, 256):
    x = torch.zeros(b, 3, 224, 224, device="cuda"); m.infer(x); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20): m.infer(x)
    torch.cuda.synchronize(); print(f"model only fp16 batch {b}: {20 * b / (time.perf_counter() - t):.0f} img/s")'
    # End to end, single-image and bulk messages, 1, 4 and 8 worker processes.
    for workers in 1 4 8; do
        timeout 150 $PY -m bench --device cuda --also none --sizes 1024x768,4032x3024 \
            --images 1024 --bulk 64 --scaling "" --workers "$workers" \
            --out "$OUT/bench-w$workers" 2>&1 | tail -30
    done
} 2>&1 | tee "$OUT/device-check.log"
