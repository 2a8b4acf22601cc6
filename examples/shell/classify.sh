#!/usr/bin/env bash
# Submit one `classify` job and wait for its result with nothing but redis-cli, as any language
# without a Celery client can: LPUSH a Celery protocol-2 message, then poll celery-task-meta-<id>.
#
#   REDIS_URL=redis://localhost:6379/0 examples/shell/classify.sh SOURCE [TOP_K]
#
# Prints the result's JSON (exactly what the worker stored) on stdout.
# Exit status: 0 success, 1 the job failed, 2 usage, 3 timeout (TIMEOUT seconds, default 60).
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == *'"'* || "$1" == *\\* ]]; then
    echo "usage: $0 SOURCE [TOP_K]   (SOURCE without quotes or backslashes)" >&2
    exit 2
fi
source=$1
top_k=${2:-5}
url=${REDIS_URL:-redis://localhost:6379/0}
id=$(cat /proc/sys/kernel/random/uuid)

# The body: [args, kwargs, embed], JSON, then base64 (kombu's Redis transport envelope).
body=$(printf '[["%s"], {"top_k": %d}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]' \
    "$source" "$top_k" | base64 -w0)
headers=$(printf '{"lang": "sh", "task": "classify", "id": "%s", "root_id": "%s", "parent_id": null, "group": null, "retries": 0, "eta": null, "expires": null, "timelimit": [null, null], "sent_at": %s}' \
    "$id" "$id" "$(date +%s.%N)")
properties=$(printf '{"correlation_id": "%s", "reply_to": "", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "%s"}' \
    "$id" "$id")
message=$(printf '{"body": "%s", "content-encoding": "utf-8", "content-type": "application/json", "headers": %s, "properties": %s}' \
    "$body" "$headers" "$properties")
redis-cli -u "$url" LPUSH celery "$message" >/dev/null
echo "submitted $id" >&2

deadline=$((SECONDS + ${TIMEOUT:-60}))
while :; do
    meta=$(redis-cli -u "$url" --raw GET "celery-task-meta-$id")
    if grep -Eq '"status": *"(SUCCESS|FAILURE|REVOKED)"' <<<"$meta"; then
        echo "$meta"
        grep -Eq '"status": *"SUCCESS"' <<<"$meta" && exit 0 || exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "timed out waiting for $id" >&2
        exit 3
    fi
    sleep 0.2
done
