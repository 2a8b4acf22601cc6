"""A job's lifecycle as other apps steer and follow it: cancels, deadlines, completion events,
webhooks and groups. Plain data shared by the producer and the worker (no Celery, no torch).

Its keys are named in core/keys.py, with every other key, and re-exported here for callers
that import them from the lifecycle they belong to.
"""

from __future__ import annotations

from core.keys import CANCEL_KEY_PREFIX as CANCEL_KEY_PREFIX
from core.keys import EVENTS_STREAM as EVENTS_STREAM
from core.keys import GROUP_KEY_PREFIX as GROUP_KEY_PREFIX
from core.keys import UPLOAD_KEY_PREFIX as UPLOAD_KEY_PREFIX
from core.keys import WEBHOOK_DEAD_LETTERS as WEBHOOK_DEAD_LETTERS
from core.keys import WEBHOOK_RETRIES as WEBHOOK_RETRIES
from core.keys import cancel_key as cancel_key
from core.keys import group_key as group_key
from core.keys import upload_key as upload_key

# -- message headers (set by producers; any language may set them) ---------------------------
# Absolute deadline, epoch seconds (float): a job not started by then ends REVOKED, `Expired`.
DEADLINE_HEADER = "imgqueue_deadline"
# The job's group id, when submitted as a group.
GROUP_HEADER = "imgqueue_group"
# Where to POST the job's result when it ends (a group's own webhook is in its metadata).
WEBHOOK_HEADER = "imgqueue_webhook"
# The tenant that submitted the job through the HTTP gateway (core/tenants.py).
TENANT_HEADER = "imgqueue_tenant"
# A bulk message's images each carry these as fields of their entry instead:
# {"id": ..., "source": ..., "deadline": 1795813200.0, "group": "<gid>", "webhook": "https://...",
#  "tenant": "<name>"}

# -- cancels ---------------------------------------------------------------------------------
# `imgqueue:cancel:<task id>`: a cancel waiting for its job's message; the worker that takes
# the message ends the job REVOKED and deletes it. Kept on the result store, next to results.

# -- completion events -----------------------------------------------------------------------
# One Redis Stream on the result store for every queue: each terminal state is one entry,
# trimmed approximately (XADD MAXLEN ~ EVENTS_MAXLEN): EVENTS_STREAM.
# Fields of an event entry (all strings; empty when not applicable):
#   kind   "job" or "group" (a group's single completion event, when its last job ends)
#   id     the task id (kind=job) or the group id (kind=group)
#   state  SUCCESS, FAILURE or REVOKED (kind=job); DONE (kind=group)
#   error  the error type (`result.exc_type`: SourceNotFound, Expired, Cancelled, ...)
#   queue  the queue the job came from
#   group  the job's group id
#   webhook  the URL to POST to (the job's or its group's), for the webhook dispatcher
#   time   epoch seconds when the state was stored
#   tenant the tenant that submitted the job (TENANT_HEADER) or the group
EVENT_FIELDS = ("kind", "id", "state", "error", "queue", "group", "webhook", "time", "tenant")
# A kind=group event carries the group's final counts too (decimal strings).
GROUP_EVENT_COUNTS = ("total", "succeeded", "failed", "cancelled")

# -- groups ----------------------------------------------------------------------------------
# A group's keys share one hash tag, so a Redis Cluster keeps them on one node for one script:
#   imgqueue:group:{<gid>}        hash: total, queue, model, created, webhook, tenant (if any),
#                                 and the counters
#                                 succeeded, failed, cancelled, finished; first_done, completed
#                                 (epoch seconds). Running and queued jobs are not counted here:
#                                 producer/groups.py reads them from the unfinished jobs' states
#   imgqueue:group:{<gid>}:ids    list of its task ids, in submit order
#   imgqueue:group:{<gid>}:done   hash task id -> final state, so a job counts once
# (group_key, core.keys.group_keys).


# How long a cancel waits for its job's message (30 days): a safety net, so a cancel of an id
# whose message never comes (mistyped, or its result already expired) does not stay forever.
CANCEL_TTL = 30 * 24 * 3600
# What a worker leaves in a cancel key it has taken, until the job's REVOKED state is stored
# (then it deletes the key): a cancel a producer wrote holds anything else.
CANCEL_TAKEN = "taken"


# -- uploads ---------------------------------------------------------------------------------
# Image bytes sent with the job instead of a URL (Client.submit(bytes), POST /v1/jobs as
# multipart): kept on the broker's Redis at `imgqueue:upload:<task id>` with a TTL, the job's
# source being `upload:<task id>`. The worker reads them from there and deletes the key when the
# job reaches a final state.
UPLOAD_SOURCE_PREFIX = "upload:"
# Defaults of UPLOAD_MAX_BYTES (bytes per upload, checked by the Client and the gateway) and
# UPLOAD_TTL_S (how long the bytes wait in Redis for their job).
UPLOAD_MAX_BYTES = 20 * 1024 * 1024
UPLOAD_TTL_S = 24 * 3600


def upload_source(task_id: str) -> str:
    return UPLOAD_SOURCE_PREFIX + task_id


# -- webhooks --------------------------------------------------------------------------------
# WEBHOOK_DEAD_LETTERS: deliveries the dispatcher gave up on (newest first, capped), shown by
# `imgqueue status`. WEBHOOK_RETRIES: deliveries waiting for their next attempt, a sorted set
# scored by when it is due.
# The consumer group the dispatchers read EVENTS_STREAM with.
WEBHOOK_CONSUMER_GROUP = "imgqueue-webhooks"
