#!/usr/bin/env bash
# One worker process per GPU on a multi-GPU host: each sees only its own card.
#   scripts/gpu-workers.sh            # every GPU that nvidia-smi lists
#   GPUS="0 2" scripts/gpu-workers.sh # chosen cards
#   PROCS_PER_GPU=4 scripts/gpu-workers.sh  # several processes share each card: one Celery
#                                           # process tops out at ~250 jobs/s (its per-job
#                                           # Python work holds the GIL), far below a GPU
# Extra settings pass through the environment (REDIS_URL, MODEL_WEIGHTS, PRECISION, ...).
# Stops all of them on Ctrl-C. Unverified in CI: no GPU there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
GPUS="${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader)}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
PROCS_PER_GPU="${PROCS_PER_GPU:-1}"
for gpu in $GPUS; do
    for ((i = 0; i < PROCS_PER_GPU; i++)); do
        # CUDA_VISIBLE_DEVICES pins the process to one card, which it then calls cuda:0.
        CUDA_VISIBLE_DEVICES="$gpu" DEVICE=cuda "$PY" -m celery -A worker worker \
            -n "gpu${gpu}-${i}@%h" --without-mingle --without-gossip -l INFO &
        pids+=("$!")
    done
done
wait
