#!/usr/bin/env bash
# The main job in one command: venv, Redis, a worker, the sample photos classified, results.
# With no internet for pretrained weights it falls back to random:0 weights, LOUDLY.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source scripts/redis.sh
PY=.venv/bin/python
export IMAGE_ROOT="$PWD/samples"
export MODEL_WEIGHTS="${MODEL_WEIGHTS:-IMAGENET1K_V2}"

if ! "$PY" -c "from worker.model.weights import resolve; resolve('$MODEL_WEIGHTS')" 2>/tmp/imgqueue-weights.err; then
    cat >&2 <<MSG

  ############################################################################
  #  WARNING: pretrained weights ($MODEL_WEIGHTS) could not be had:
  #  $(tail -1 /tmp/imgqueue-weights.err | cut -c1-150)
  #  Falling back to MODEL_WEIGHTS=random:0. The labels below are MEANINGLESS;
  #  every result says "weights": "random:0" and carries a warning.
  ############################################################################

MSG
    export MODEL_WEIGHTS=random:0
fi

log=$(mktemp)
"$PY" -m celery -A worker worker -l INFO -n "demo-$$@%h" >"$log" 2>&1 &
worker_pid=$!
cleanup() { kill "$worker_pid" 2>/dev/null; wait "$worker_pid" 2>/dev/null; stop_private_redis; }
trap cleanup EXIT
for _ in $(seq 600); do
    grep -q " ready." "$log" && break
    kill -0 "$worker_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
done
echo "worker ready (log: $log); classifying samples/ ..." >&2
"$PY" -m producer submit --wait --timeout 300 --top-k 3 "$PWD/samples" >/tmp/imgqueue-demo.jsonl || true
echo "JSON results (one per line): /tmp/imgqueue-demo.jsonl" >&2
"$PY" -m cli.summary </tmp/imgqueue-demo.jsonl
