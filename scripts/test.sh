#!/usr/bin/env bash
# The test command: install (if needed), lint, then the whole suite against real processes.
# The suite starts its own redis-server on a free port, so it never touches a shared Redis.
#
#   bash scripts/test.sh [PYTEST ARGS]            # the locked versions (requirements/lock.txt)
#   bash scripts/test.sh --latest [PYTEST ARGS]   # the newest versions pyproject.toml allows,
#                                                 # in .venv-latest (also: LATEST=1)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--latest" ]; then
    export LATEST=1
    shift
fi
if [ "${LATEST:-0}" = 1 ]; then
    VENV="${VENV:-.venv-latest}"
else
    VENV="${VENV:-.venv}"
fi
export VENV
bash scripts/bootstrap.sh
if ! command -v redis-server >/dev/null; then
    echo "redis-server is not installed; installing it" >&2
    apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v promtool >/dev/null; then
    # The alert-rule tests run Prometheus's promtool (Debian's prometheus package).
    echo "promtool is not installed; installing prometheus" >&2
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v chromium >/dev/null; then
    # The gateway page's browser test drives Debian's chromium with Playwright (Playwright's
    # own browser download is not used).
    echo "chromium is not installed; installing it" >&2
    apt-get install -y -qq chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
fi
AZURITE=3.35.0
if [ ! -x .cache/azurite/node_modules/.bin/azurite-blob ] && command -v npm >/dev/null; then
    # The az:// tests run Microsoft's Azure Blob emulator (npm's azurite) on loopback.
    echo "azurite is not installed; installing azurite@$AZURITE into .cache/azurite" >&2
    npm install --prefix .cache/azurite --no-audit --no-fund --silent "azurite@$AZURITE" >/dev/null
fi
if [ "${LATEST:-0}" = 1 ]; then
    "$VENV/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(celery|kombu|redis|torch|torchvision|onnxruntime|mypy|ruff)==' | tr '\n' ' '
    echo "(latest)"
fi
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
