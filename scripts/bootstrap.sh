#!/usr/bin/env bash
# Create .venv with the worker, gateway, objects, parquet and dev extras, at the versions requirements/lock.txt pins
# (torch from this machine's pip cache/disk). Idempotent: an existing venv is only topped up.
#
#   LATEST=1 bash scripts/bootstrap.sh   # .venv-latest instead: the newest versions
#                                        # pyproject.toml's ranges allow, ignoring the lock
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LOCK=requirements/lock.txt
if [ "${LATEST:-0}" = 1 ]; then
    VENV="${VENV:-.venv-latest}"
    # Eager: every dependency, not only the ones pyproject.toml names, at its newest.
    install=(--upgrade --upgrade-strategy eager)
    # Once a day at most: "latest" is a moving target.
    stamp_of="$(sha256sum pyproject.toml | cut -c1-16)-latest-$(date +%F)"
else
    VENV="${VENV:-.venv}"
    install=(-c "$LOCK")
    stamp_of="$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16)"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$stamp_of"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    # Compiled at install (pip's default), not left to the first import: with
    # PYTHONDONTWRITEBYTECODE set, as on these machines, every worker would compile torch again.
    "$VENV/bin/pip" install --quiet "${install[@]}" -e '.[worker,gateway,objects,parquet,dev]' 2>&1 \
        | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c 'import torch, torchvision, celery, redis' # fail loudly if incomplete
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
