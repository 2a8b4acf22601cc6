#!/usr/bin/env bash
# Create .venv with the worker and dev extras (torch from this machine's pip cache/disk).
# Idempotent: an existing venv is only topped up.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/pip" install --quiet -e '.[worker,dev]' 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c 'import torch, torchvision, celery, redis' # fail loudly if incomplete
    touch "$stamp"
fi
