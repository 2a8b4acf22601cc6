#!/usr/bin/env bash
# The test command: install (if needed), lint, then the whole suite against real processes.
# The suite starts its own redis-server on a free port, so it never touches a shared Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
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
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
