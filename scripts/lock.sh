#!/usr/bin/env bash
# Refresh requirements/lock.txt: every package that bootstrap.sh, .ci/run and the Dockerfiles
# install (the base, worker, gateway, render, objects, parquet and dev extras), each pinned, resolved by pip-tools'
# pip-compile from pyproject.toml's ranges. The lock is a pip requirements file: pip (not uv or
# poetry) reads it, so torch still comes from wherever pip finds it (this machine's disk here).
#
#   bash scripts/lock.sh                 # newest versions the ranges allow (an upgrade)
#   bash scripts/lock.sh --no-upgrade    # keep the current pins; only add what is missing
#   bash scripts/lock.sh -P redis        # upgrade one package (any pip-compile option passes)
#
# Then run `bash scripts/test.sh` and commit the lock with whatever the upgrade needed.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${TOOLS_VENV:-.venv-tools}"
PIP_TOOLS="pip-tools==7.7.0"
if [ ! -x "$TOOLS/bin/pip-compile" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet --upgrade pip "$PIP_TOOLS" 2>&1 | grep -v '^WARNING: Location' || true
fi
upgrade=(--upgrade)
if [ "${1:-}" = "--no-upgrade" ]; then
    upgrade=()
    shift
elif [ "${1:-}" = "-P" ] || [ "${1:-}" = "--upgrade-package" ]; then
    upgrade=()
fi
# No index or find-links lines: the lock names versions, not where this machine found them.
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$TOOLS/bin/pip-compile" --quiet "${upgrade[@]}" \
    --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
    --extra worker --extra gateway --extra render --extra objects --extra parquet --extra dev \
    --output-file requirements/lock.txt "$@" pyproject.toml 2>&1 | grep -v '^WARNING: Location' || true
grep -q '^torch==' requirements/lock.txt  # fail loudly if the resolve did not finish
echo "requirements/lock.txt: $(grep -c '==' requirements/lock.txt) packages pinned"
