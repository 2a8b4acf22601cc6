# The worker image: imgqueue + torch, with the model weights baked in at build time so a
# container starts (and passes its health check) without any internet access.
#
#   docker build -t imgqueue-worker .                                   # CUDA torch (GPU hosts)
#   docker build -t imgqueue-worker:cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
#
# The install and start commands are the ones scripts/bootstrap.sh and the README use.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/torch

# Empty: PyPI's default torch wheels (CUDA on x86_64). The CPU index makes a far smaller image.
ARG TORCH_INDEX=""
WORKDIR /app

# Dependencies first, so editing the code does not re-download torch.
# The versions requirements/lock.txt pins (bash scripts/lock.sh refreshes it), as CI tests them.
COPY pyproject.toml README.md ./
COPY requirements/lock.txt ./requirements/
# The shared core and the worker: nothing of producer/, services/ or cli/ (tests/unit/
# test_ops_deploy.py checks that the worker imports nothing else).
COPY core ./core
COPY worker ./worker
RUN if [ -n "$TORCH_INDEX" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX"; fi \
    && pip install -c requirements/lock.txt '.[worker]'

# Bake the weights into $TORCH_HOME (verified by their sha256 prefix). Any MODEL_WEIGHTS value
# works: IMAGENET1K_V2, IMAGENET1K_V1, or a state-dict file copied into the build context.
ARG MODEL_WEIGHTS=IMAGENET1K_V2
ENV MODEL_WEIGHTS=${MODEL_WEIGHTS}
RUN python -c "from worker.model.weights import resolve; print(resolve('${MODEL_WEIGHTS}'))"

RUN useradd --system --uid 10001 --home-dir /app imgqueue && mkdir -p /tmp/imgqueue \
    && chown imgqueue /tmp/imgqueue
USER imgqueue

# Metrics and /ready on 9808; the ready file appears once the model is loaded and warmed up.
ENV METRICS_PORT=9808 \
    READY_FILE=/tmp/imgqueue/worker.ready
EXPOSE 9808
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "worker.health"]

CMD ["celery", "-A", "worker", "worker", "-l", "INFO", "-n", "worker@%h"]
