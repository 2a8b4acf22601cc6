"""Every Redis key name of the service, and the priority lists: the one place that spells them.

Workers, producers, services and the CLI build every key here. The delivery layer's Lua scripts
(worker/broker/scripts.py) take theirs as KEYS, or as the prefixes of a consumer's keys
(`Keys.consumer_prefixes`) in ARGV, and split unacked values on their first newline.

The delivery layer's keys, each after `<REDIS_KEY_PREFIX>imgqueue:` (docs/reliability.md):

    consumers            ZSET  consumer id -> its last heartbeat (Redis server time)
    inboxes:<cid>        HASH  inbox list -> the queue list it takes from
    inbox:<cid>:<list>   LIST  messages popped from <list>, not yet claimed (normally 0 or 1)
    unacked:<cid>        HASH  delivery tag -> "<queue list>\\n<message marked redelivered>"
    unacked-at:<cid>     ZSET  delivery tag -> delivery time (server time, whole seconds)
    dead-letters         LIST  core.deadletters entries, newest first
    sweep-lock           STRING  one sweep per interval across all workers

Queue lists are kombu's, after REDIS_KEY_PREFIX only: one list per priority, `<queue>` for 0
and `<queue>\\x06\\x16<n>` for n = 1..9.

The other keys, each after REDIS_KEY_PREFIX (docs/lifecycle.md, docs/tenants.md):

    celery-task-meta-<id>            STRING  a job's result (Celery's JSON; core.states)
    imgqueue-deliveries-<id>-<n>     STRING  how often retry n of a job was started
    imgqueue:result-cache:<sha256>   STRING  a cached result (worker/cache.py)
    imgqueue:cancel:<id>             STRING  a cancel waiting for its job (core.lifecycle)
    imgqueue:events                  STREAM  completion events
    imgqueue:events:outbox{...}      HASH    events a cluster store has yet to append
    imgqueue:group:{<gid>}[:done|:ids]       a group's hash, done hash and ids list
    imgqueue:upload:<id>             STRING  an upload's bytes, until its job ends
    imgqueue:webhooks:dead|retry     LIST|ZSET  the webhook dispatcher's dead and due deliveries
    imgqueue:tenants, imgqueue:keys  HASH    tenants and API keys (core.tenants)
    imgqueue:tenant-jobs:<tenant>    ZSET    a tenant's unfinished jobs
    imgqueue:models, imgqueue:limits HASH    routed models, queue limits
    imgqueue:idem:<tenant>:<sha256>  STRING  the gateway's idempotency records

Importing this needs nothing beyond the standard library (a producer-only install).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Priorities, as Celery and kombu store them on Redis: 0 is the HIGHEST, 9 the lowest, and a
# message without one counts as 0. kombu clamps every priority to 0..9 and names the list
# after the step it falls in; workers take from the lists highest first.
PRIORITY_STEPS = tuple(range(10))
MIN_PRIORITY, MAX_PRIORITY = PRIORITY_STEPS[0], PRIORITY_STEPS[-1]
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Channel.sep (worker.broker.compat checks it)

BROKER_KEY_PREFIX = "imgqueue:"
DEAD_LETTERS_KEY = BROKER_KEY_PREFIX + "dead-letters"
CONSUMERS_KEY = BROKER_KEY_PREFIX + "consumers"

# The other keys (module doc), without REDIS_KEY_PREFIX: callers put it before them.
RESULT_KEY_PREFIX = "celery-task-meta-"
DELIVERIES_KEY_PREFIX = "imgqueue-deliveries-"
RESULT_CACHE_KEY_PREFIX = BROKER_KEY_PREFIX + "result-cache:"
CANCEL_KEY_PREFIX = BROKER_KEY_PREFIX + "cancel:"
EVENTS_STREAM = BROKER_KEY_PREFIX + "events"
GROUP_KEY_PREFIX = BROKER_KEY_PREFIX + "group:"
UPLOAD_KEY_PREFIX = BROKER_KEY_PREFIX + "upload:"
WEBHOOK_DEAD_LETTERS = BROKER_KEY_PREFIX + "webhooks:dead"
WEBHOOK_RETRIES = BROKER_KEY_PREFIX + "webhooks:retry"
TENANTS_KEY = BROKER_KEY_PREFIX + "tenants"
API_KEYS_KEY = BROKER_KEY_PREFIX + "keys"
TENANT_JOBS_KEY_PREFIX = BROKER_KEY_PREFIX + "tenant-jobs:"
MODELS_KEY = BROKER_KEY_PREFIX + "models"
LIMITS_KEY = BROKER_KEY_PREFIX + "limits"
IDEMPOTENCY_KEY_PREFIX = BROKER_KEY_PREFIX + "idem:"


def result_key(task_id: str, key_prefix: str = "") -> str:
    """The Redis key holding a task's result JSON."""
    return key_prefix + RESULT_KEY_PREFIX + task_id


def delivery_key(task_id: str, retries: int, key_prefix: str = "") -> str:
    """The counter of one retry's starts (worker/deliveries.py)."""
    return f"{key_prefix}{DELIVERIES_KEY_PREFIX}{task_id}-{retries}"


def cancel_key(task_id: str) -> str:
    return CANCEL_KEY_PREFIX + task_id


def upload_key(task_id: str) -> str:
    """The key of an upload, after REDIS_KEY_PREFIX."""
    return UPLOAD_KEY_PREFIX + task_id


def group_key(group_id: str, part: str = "") -> str:
    """A group's key (`part`: "", "done" or "ids"); all three share one hash tag, so a Redis
    Cluster keeps them on one node for one script."""
    return f"{GROUP_KEY_PREFIX}{{{group_id}}}" + (f":{part}" if part else "")


def group_keys(group_id: str, key_prefix: str = "") -> tuple[str, str, str]:
    """A group's hash, its `done` hash and its ids list, after `key_prefix`."""
    return (
        key_prefix + group_key(group_id),
        key_prefix + group_key(group_id, "done"),
        key_prefix + group_key(group_id, "ids"),
    )


def outbox_key(stream: str) -> str | None:
    """The outbox of `stream` (core/outbox.py), in the stream's hash slot (one script writes
    both); None where no key can share it (a stream name with a stray brace)."""
    start = stream.find("{")
    if start < 0:
        return f"{stream}:outbox{{{stream}}}"
    end = stream.find("}", start + 1)
    if end > start + 1:
        return stream + ":outbox"  # the stream's own hash tag decides both slots
    return None


def tenant_jobs_key(tenant: str) -> str:
    return TENANT_JOBS_KEY_PREFIX + tenant


def idempotency_key(tenant: str, digest: str) -> str:
    """The gateway's record of one client key (`digest`: its sha256) of `tenant`."""
    return f"{IDEMPOTENCY_KEY_PREFIX}{tenant}:{digest}"


def queue_list(queue: str, priority: int) -> str:
    """The Redis list holding `queue`'s messages of one priority (before any key prefix)."""
    return f"{queue}{PRIORITY_SEPARATOR}{priority}" if priority else queue


def priority_lists(queue: str, prefix: str = "") -> list[str]:
    """The ten lists holding `queue`'s waiting messages, priority 0 (highest) first."""
    return [prefix + queue_list(queue, priority) for priority in PRIORITY_STEPS]


def queue_of(list_key: str, prefix: str = "") -> str:
    """The queue a list belongs to: `celery\\x06\\x163` -> `celery`."""
    name = list_key[len(prefix) :] if prefix and list_key.startswith(prefix) else list_key
    return name.split(PRIORITY_SEPARATOR, 1)[0]


def unacked_value(list_key: str, message: str) -> str:
    """A claim's value in `unacked:<cid>`: the list it goes back to, a newline, the message
    (JSON has no raw newline, and queue names carry none)."""
    return list_key + "\n" + message


def unacked_list(value: str) -> str:
    """The list key an unacked value goes back to (see `unacked_value`)."""
    return value.split("\n", 1)[0]


@dataclass(frozen=True)
class Keys:
    """Key names under one key prefix, and for one consumer id where `cid` is given."""

    prefix: str = ""  # REDIS_KEY_PREFIX (kombu's global_keyprefix), may be ""
    cid: str = ""

    def of(self, cid: str) -> Keys:
        """The same prefix, another consumer's keys."""
        return replace(self, cid=cid)

    @property
    def base(self) -> str:
        """`<prefix>imgqueue:`: the delivery layer's keys but the queue lists start with it."""
        return self.prefix + BROKER_KEY_PREFIX

    @property
    def consumers(self) -> str:
        return self.prefix + CONSUMERS_KEY

    @property
    def inboxes(self) -> str:
        return f"{self.base}inboxes:{self.cid}"

    def inbox(self, queue_list: str) -> str:
        return f"{self.base}inbox:{self.cid}:{queue_list}"

    @property
    def unacked(self) -> str:
        return f"{self.base}unacked:{self.cid}"

    @property
    def unacked_at(self) -> str:
        return f"{self.base}unacked-at:{self.cid}"

    @property
    def dead_letters(self) -> str:
        return self.prefix + DEAD_LETTERS_KEY

    @property
    def sweep_lock(self) -> str:
        return self.base + "sweep-lock"

    @property
    def consumer_prefixes(self) -> list[str]:
        """What every consumer's inboxes, unacked and unacked-at keys start with: each such
        key is its prefix and the consumer id (SWEEP builds them so for the ids it finds)."""
        blank = self.of("")
        return [blank.inboxes, blank.unacked, blank.unacked_at]

    def queue_list(self, name: str) -> str:
        """A queue list's real key: kombu prefixes them with global_keyprefix."""
        return self.prefix + name

    def priority_lists(self, queue: str) -> list[str]:
        """The real keys of `queue`'s ten lists, priority 0 (highest) first."""
        return priority_lists(queue, self.prefix)
