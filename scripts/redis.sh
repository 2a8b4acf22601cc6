#!/usr/bin/env bash
# Source this: makes sure a Redis answers at $REDIS_URL (default redis://localhost:6379/0);
# when none does, starts a private redis-server on a free port and points REDIS_URL at it.
# stop_private_redis (called on exit by the scripts that source this) shuts it down again.
REDIS_URL="${REDIS_URL:-redis://localhost:6379/0}"
PRIVATE_REDIS_PID=""

redis_answers() {
    "${VENV:-.venv}/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}

if ! redis_answers "$REDIS_URL"; then
    if ! command -v redis-server >/dev/null; then
        echo "redis-server is not installed; installing it (apt-get install redis-server)" >&2
        apt-get install -y -qq redis-server >/dev/null
    fi
    port=$("${VENV:-.venv}/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
        --daemonize no >"$dir/redis.log" 2>&1 &
    PRIVATE_REDIS_PID=$!
    REDIS_URL="redis://127.0.0.1:$port/0"
    for _ in $(seq 100); do redis_answers "$REDIS_URL" && break; sleep 0.1; done
    echo "no Redis answered; started a private redis-server at $REDIS_URL" >&2
fi
export REDIS_URL

stop_private_redis() {
    if [ -n "$PRIVATE_REDIS_PID" ]; then kill "$PRIVATE_REDIS_PID" 2>/dev/null || true; fi
}
